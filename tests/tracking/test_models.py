"""Front models in MLflow (SQLite store): the pyfunc flavour, orchestrator.load_model of runs:/ and
models:/ URIs, the registry's versions, tags and aliases."""

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import orchestrator
from orchestrator.io.artifact import export
from orchestrator.tasks.char_lm import build_model
from orchestrator.core.objectives import Objectives
from orchestrator.tracking.front import log_front_models, register_front
from orchestrator.tracking.mlflow_store import MlflowTracker
from orchestrator.tracking.models import download_model, pinned_requirements
from orchestrator.tracking.sweep_runs import SweepRuns


def _front(tmp_path, n=3):
    """A sweep's runs, a trials table of `n` front points (tiny GPTs packed to artifacts) and their models."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = SweepRuns(MlflowTracker(uri, "models"), "sweep-1")
    runs.start(params={}, tags={}, description="", metrics={})
    rows, nets = [], {}
    for i in range(n):
        torch.manual_seed(i)
        net = build_model(20, 16, layers=1, width=16, heads=2).eval()
        path = tmp_path / f"m{i}.orc"
        export(net, path, entropy="zstd")
        run_id = runs.start_trial(f"t{i}", {"width": 16})
        rows.append({"trial_id": f"t{i}", "run_name": f"trial-000{i + 1}", "run_id": run_id, "pareto": True,
                     "artifact": str(path), "accuracy": [0.5, 0.3, 0.4][i], "size_mb": [0.3, 0.1, 0.2][i],
                     "latency_ms": [0.2, 0.4, 0.1][i]})
        nets[f"t{i}"] = net
    trials = pd.DataFrame(rows)
    example = torch.randint(20, (1, 16)).numpy()
    return uri, runs, trials, nets, log_front_models(runs, trials, example)


def test_a_front_model_loads_through_pyfunc_and_as_the_torch_module(tmp_path):
    uri, runs, trials, nets, models = _front(tmp_path, n=1)
    assert models == {"t0": f"runs:/{trials['run_id'][0]}/model"}
    mlflow.set_tracking_uri(uri)  # also sets $MLFLOW_TRACKING_URI: unset below, or later sweeps would use it
    try:
        pyfunc = mlflow.pyfunc.load_model(models["t0"])
    finally:
        mlflow.set_tracking_uri(None)
    x = torch.randint(20, (5, 11))  # fewer positions than the context: any window length up to it
    with torch.no_grad():
        expected = nets["t0"](x)[0].argmax(-1).numpy()
    predicted = pyfunc.predict(x.numpy())
    assert predicted.dtype == np.int64 and predicted.shape == (5, 11) and (predicted == expected).all()
    inputs = pyfunc.metadata.get_input_schema().inputs[0]
    assert inputs.type == np.dtype(np.int64) and inputs.shape == (-1, -1)
    model = orchestrator.load_model(models["t0"], tracking_uri=uri)
    for a, b in zip(model.state_dict().values(), nets["t0"].state_dict().values()):
        assert torch.equal(a, b)
    local = download_model(models["t0"], uri, into=tmp_path / "download").parent.parent
    requirements = (local / "requirements.txt").read_text().split()
    assert set(pinned_requirements("gpt")) <= set(requirements) and any(r.startswith("mlflow==") for r in requirements)
    assert all("==" in r and "+" not in r for r in requirements)
    assert (local / "code" / "orchestrator" / "tracking" / "pyfunc.py").exists()  # the loader travels with it
    assert not list((local / "code").rglob("__pycache__"))
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "orchestrator.tracking.pyfunc"
    assert (local / "input_example.json").exists()


def test_the_front_is_registered_with_aliases_and_measured_tags(tmp_path):
    uri, runs, trials, nets, models = _front(tmp_path)
    aliases = register_front(runs, "front", trials, models, objectives=Objectives(["accuracy", "size_mb", "latency_ms"]),
                             recommended="t2")
    # t0 is the most accurate, t1 the smallest, t2 the fastest and (here) the recommended one
    assert aliases == {"recommended": "3", "smallest": "2", "fastest": "3", "most-accurate": "1"}
    client = runs.tracker.client
    version = client.get_model_version_by_alias("front", "smallest")
    assert version.run_id == trials["run_id"][1]
    assert version.tags["size_mb"] == "0.1" and version.tags["accuracy"] == "0.3" and version.tags["trial"] == "trial-0002"
    assert version.tags["sweep_id"] == "sweep-1"
    model = orchestrator.load_model("models:/front@most-accurate", tracking_uri=uri)
    for a, b in zip(model.state_dict().values(), nets["t0"].state_dict().values()):
        assert torch.equal(a, b)
    # a second sweep registers new versions of the same name and moves the aliases
    second = SweepRuns(runs.tracker, "sweep-2")
    again = register_front(second, "front", trials.iloc[:1], {"t0": models["t0"]}, objectives=Objectives(["accuracy", "size_mb"]),
                           recommended=None)
    assert again == {"smallest": "4", "fastest": "4", "most-accurate": "4"}
    assert str(client.get_model_version_by_alias("front", "recommended").version) == "3"  # not moved: none recommended


def test_a_uri_that_holds_no_orchestrator_model_is_refused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "x")
    run = tracker.create_run("s", {}, strict=True)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("not a model")
    tracker.log_artifact(run, tmp_path / "model", "model")
    with pytest.raises(ValueError, match="not a model logged by orchestrator"):
        orchestrator.load_model(f"runs:/{run}/model", tracking_uri=uri)
