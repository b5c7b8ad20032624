"""cluster.yaml, checked offline by Ray's own cluster-launcher validator (`ray-schema.json` and the launcher's
rules, shipped inside the `ray` package) and against this project's pins and search spaces."""

import copy
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _pins() -> dict[str, str]:
    """pyproject's requirement of each package, by name: {"ray": "ray[default,tune,train]==2.60.*", ...}."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[<>=!~ ]", d, 1)[0]: d for d in deps}


def test_ray_validates_it_as_its_cluster_launcher_would(cluster):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cluster)))
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_1x"]["max_worker"] = 3  # a typo Ray must refuse
    with pytest.raises(Exception, match="max_worker"):
        validate_config(prepare_config(broken))


def test_every_node_installs_the_versions_pyproject_pins(cluster):
    setup = " ".join(cluster["setup_commands"])
    pins = _pins()
    for name in ("ray", "torch", "optuna", "mlflow"):
        assert f'"{pins[name]}"' in setup, f"cluster.yaml's setup must install {pins[name]} (pyproject.toml), as written there"
    installed = re.findall(r'"(ray\[[^"]*)"', setup)
    assert installed == [pins["ray"]], f"cluster.yaml pins {installed}, pyproject.toml {pins['ray']}"
    assert "pip install -q -e \"/home/ubuntu/orchestrator[hf]\"" in setup  # the project itself, from file_mounts
    assert cluster["file_mounts"]["/home/ubuntu/orchestrator"] == "."


def test_the_head_never_trains_and_the_worker_types_fit_the_search_spaces(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"]["CPU"] == 0 and head["resources"]["GPU"] == 0 and head["resources"]["trial_driver"] > 0
    gpus = sorted(t["resources"].get("GPU", 0) for name, t in types.items() if name != cluster["head_node_type"])
    assert gpus == [0, 1, 8]  # a CPU type, a small GPU type, an 8-GPU type
    offered = {k for t in types.values() for k in t["resources"]}
    space = yaml.safe_load((ROOT / "search_spaces" / "smollm2_kjv.yaml").read_text())  # the cluster's sweep
    assert space["resources"]["driver_resource"] in offered and space["measure"]["target"] in offered
    assert space["resources"]["use_gpu"] and space["resources"]["num_workers"] <= 8


def test_every_node_starts_ray_with_token_auth_storage_and_tracking(cluster):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cluster[key])
        for var in ("RAY_AUTH_MODE=token", "ORCHESTRATOR_STORAGE=s3://", "MLFLOW_TRACKING_URI=http", "ORCHESTRATOR_CACHE="):
            assert var in start, f"{key} lacks {var}"
    assert "/home/ubuntu/.ray/auth_token" in cluster["file_mounts"]
