"""What a trial holds in Ray, and how many fit beside the measurement service."""

import pytest

from orchestrator import ConfigError, load_config
from orchestrator.engine.cluster import TRIAL_MEMORY_BYTES, check_fits, trial_resources


def test_a_trial_reserves_its_workers_resources_when_it_distils_itself():
    assert trial_resources(load_config(None)) == {"cpu": 1.0, "gpu": 0, "memory": TRIAL_MEMORY_BYTES}
    gpu = load_config(None, overrides={"resources": {"use_gpu": True, "cpus_per_worker": 4}})
    assert trial_resources(gpu) == {"cpu": 4.0, "gpu": 1, "memory": TRIAL_MEMORY_BYTES}
    ddp = load_config(None, overrides={"resources": {"num_workers": 2, "trial_cpus": 0.5}})
    assert trial_resources(ddp) == {"cpu": 0.5, "memory": TRIAL_MEMORY_BYTES}  # its workers hold their own


def test_trials_fit_beside_the_measurement_service_or_the_sweep_is_refused():
    two = load_config(None, overrides={"max_concurrent_trials": 2})
    assert check_fits(two, {"CPU": 2.0}) == 2  # isolation pause: the service holds no CPU, training pauses instead
    reserved = load_config(None, overrides={"max_concurrent_trials": 2, "measure.isolation": "reserve"})
    assert check_fits(reserved, {"CPU": 2.0}) == 1  # the service holds one of the two CPUs
    assert check_fits(reserved, {"CPU": 3.0}) == 2 and check_fits(reserved, {"CPU": 16.0}) == 2  # never more than asked
    ddp = load_config(None, overrides={"resources": {"num_workers": 2}, "measure.isolation": "reserve"})
    with pytest.raises(ConfigError, match="a trial needs 2 CPUs and the measurement service holds 1 .* this Ray has 2"):
        check_fits(ddp, {"CPU": 2.0})
    assert check_fits(load_config(None, overrides={"resources": {"num_workers": 2}}), {"CPU": 2.0}) == 1
    with pytest.raises(ConfigError, match=r"`measure.cpus` is 1, .* `measure.isolation` is pause, which holds none; set "
                                          r"`measure.isolation: reserve` or drop `measure.cpus`"):
        load_config(None, overrides={"measure.cpus": 1})
    assert check_fits(load_config(None, overrides={"measure.isolation": "reserve", "measure.cpus": 0.5, "max_concurrent_trials": 4}), {"CPU": 2.0}) == 1
    cuda = load_config(None, overrides={"measure.device": "cuda"})
    with pytest.raises(ConfigError, match="need 1 GPUs together .* this Ray has 0"):
        check_fits(cuda, {"CPU": 4.0})
    assert check_fits(cuda, {"CPU": 4.0, "GPU": 1.0}) == 4  # max_concurrent_trials null: as many as fit
    gpus = load_config(None, overrides={"resources.use_gpu": True, "trials": 20})
    assert check_fits(gpus, {"CPU": 64.0, "GPU": 8.0}) == 8  # one GPU per trial: the cluster's GPUs decide
    assert check_fits(gpus, {"CPU": 2.0}, strict=False) == 1  # a cluster whose GPU nodes are not up yet
    ddp_gpus = load_config(None, overrides={"resources": {"use_gpu": True, "num_workers": 2}, "trials": 20})
    assert check_fits(ddp_gpus, {"CPU": 64.0, "GPU": 8.0}) == 4


def test_trial_drivers_can_be_held_to_a_node_that_never_trains():
    ddp = load_config(None, overrides={"resources": {"num_workers": 2, "driver_resource": "trial_driver"}})
    assert trial_resources(ddp) == {"cpu": 0.0, "memory": TRIAL_MEMORY_BYTES, "trial_driver": 0.001}
    in_trial = load_config(None, overrides={"resources": {"driver_resource": "trial_driver"}})
    assert "trial_driver" not in trial_resources(in_trial)  # that driver trains: it goes where the workers go
