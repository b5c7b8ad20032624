"""bench/simulate.py's model of a sweep against a real sweep on this machine: from the stage costs it measures,
it predicts the trials per hour that the same sweep took here within 15 %."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _simulate():
    spec = importlib.util.spec_from_file_location("simulate", ROOT / "bench" / "simulate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulate"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_simulation_reproduces_the_measured_trials_per_hour_of_one_node(ray_session, tmp_path, monkeypatch):
    sim = _simulate()
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text((ROOT / "search_spaces" / "smoke.yaml").read_text().replace("max_concurrent_trials: 1", "max_concurrent_trials: 2")
                     .replace("steps: 20", "steps: 400"))  # trials long enough that their stages, not the driver's noise, count
    measured = sim.measure(str(space), 6, tmp_path)
    assert len(measured.trials) == 6 and measured.slots == 2 and measured.record_s > 0
    # each distillation as long as it ran: the node's gate also paused it for measurements of other sweeps (the
    # suite's other worker), which the model cannot know of
    here = sim.Simulation(measured, slots=measured.slots, replicas=1, pause=False, trials=6, as_measured=True).run()
    assert here["trials"] == 6
    assert abs(here["trials_per_hour"] / measured.trials_per_hour - 1) <= 0.15, (here, measured.trials_per_hour)


def test_a_cluster_with_one_replica_is_held_by_the_service_and_more_replicas_move_the_ceiling():
    sim = _simulate()
    costs = [sim.Costs(distill=10.0, paused=0.0, stages=0.5, measure=0.5, fixed=1.0)]
    measured = sim.Measured(trials=costs, start_s=0.01, record_s=0.02, slots=2, trials_per_hour=0.0)
    one = sim.Simulation(measured, slots=64, replicas=1, pause=False, trials=3000).run()
    four = sim.Simulation(measured, slots=64, replicas=4, pause=False, trials=3000).run()
    # 64 slots finish a trial every 12 s each, 5.3 per second; one replica measures 2 per second
    assert sim.bottleneck(one["utilisation"]) == "measurement service" and one["utilisation"]["service"] > 0.95
    assert one["trials_per_hour"] == pytest.approx(2 * 3600, rel=0.03)
    assert four["trials_per_hour"] > 2.4 * one["trials_per_hour"] and sim.bottleneck(four["utilisation"]) == "training slots"
    alone = sim.Simulation(measured, slots=1, replicas=1, pause=True, trials=50).run()  # one slot: a trial after another
    assert alone["trials_per_hour"] == pytest.approx(3600 / (0.01 + 1.0 + 10.0 + 0.5 + 0.5 + 0.02), rel=0.01)
