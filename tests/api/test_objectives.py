"""Objectives a user chooses, end to end (real Ray Tune, Optuna, MLflow and the measurement service):
the front and the hypervolume recomputed here, independently, from what MLflow logged."""

import itertools
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna._hypervolume import compute_hypervolume

from orchestrator import Objective, Sweep, register_objective

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
IDEAL = {"accuracy": 1.0, "perplexity": 1.0, "size_mb": 0.0, "latency_ms": 0.0, "peak_memory_mb": 0.0}
MAXIMISED = {"accuracy"}

pytestmark = pytest.mark.slow

IDEAL["bits_per_char"] = 0.0


@pytest.fixture
def bits_per_char():
    """An objective of the user's own, registered in the test's process (the sweep's workers get it from
    the sweep) and removed afterwards."""
    from orchestrator.core.objectives import OBJECTIVES

    register_objective(Objective(
        "bits_per_char", "min", "bits", "validation bits per character", "held_out",
        lambda p: math.log2(p.held_out["perplexity"]) if "perplexity" in p.held_out else None,
        ideal=0.0, reference=lambda teacher: math.log2(teacher["output_classes"]),
    ))
    yield "bits_per_char"
    del OBJECTIVES["bits_per_char"]

# three students of known shapes; the narrow 4-bit, 60%-sparse one is the smallest and the worst predictor
POINTS = [
    {"width": 32, "bits": 8, "sparsity": 0.2, "optimizer": "adamw", "lr": 1e-2, "beta": 0.5, "lambda": 0.5, "temperature": 2.0},
    {"width": 16, "bits": 4, "sparsity": 0.6, "optimizer": "adamw", "lr": 1e-3, "beta": 0.5, "lambda": 0.5, "temperature": 2.0},
    {"width": 32, "bits": 32, "sparsity": 0.0, "optimizer": "adamw", "lr": 1e-2, "beta": 0.5, "lambda": 0.5, "temperature": 2.0},
]


def _logged(uri: str, result) -> tuple[list[dict[str, float]], dict[str, float], dict[str, str], float]:
    """(each child run's metrics and tags, the parent's metrics, its tags, its last logged hypervolume)."""
    client = MlflowClient(uri)
    children = client.search_runs([result.experiment_id], f"tags.`mlflow.parentRunId` = '{result.run_id}'")
    parent = client.get_run(result.run_id)
    rows = [{**c.data.metrics, "trial_id": c.data.tags["trial_id"], "pareto": c.data.tags.get("pareto") == "true",
             "feasible": c.data.tags.get("feasible") != "false"} for c in children]
    history = sorted(client.get_metric_history(result.run_id, "hypervolume"), key=lambda m: m.step)
    return rows, parent.data.metrics, parent.data.tags, history[-1].value


def _dominates(a: dict, b: dict, names: list[str]) -> bool:
    better = [(a[n] > b[n]) if n in MAXIMISED else (a[n] < b[n]) for n in names]
    no_worse = [(a[n] >= b[n]) if n in MAXIMISED else (a[n] <= b[n]) for n in names]
    return all(no_worse) and any(better)


def _independent_hypervolume(points: list[dict], names: list[str], ref: dict[str, float]) -> float:
    """Optuna's hypervolume (another implementation) of the points in minimisation form, over the box
    from the reference to the ideal."""
    flip = np.array([-1.0 if n in MAXIMISED else 1.0 for n in names])
    values = np.array([[p[n] for n in names] for p in points]).reshape(-1, len(names)) * flip
    r = np.array([ref[n] for n in names]) * flip
    inside = values[(values < r).all(1)]
    volume = compute_hypervolume(inside, r) if len(inside) else 0.0
    return volume / math.prod(abs(ref[n] - IDEAL[n]) for n in names)


def _check_front_and_hypervolume(result, uri: str, names: list[str]) -> list[dict]:
    rows, parent, tags, hv = _logged(uri, result)
    assert tags["objectives"] == ",".join(names)
    feasible = [r for r in rows if r["feasible"]]
    front = {r["trial_id"] for r in feasible if not any(_dominates(o, r, names) for o in feasible)}
    assert {r["trial_id"] for r in rows if r["pareto"]} == front == set(result.pareto["trial_id"])
    ref = {n: parent[f"hypervolume_ref_{n}"] for n in names}
    assert hv == pytest.approx(_independent_hypervolume(feasible, names, ref)) == pytest.approx(result.hypervolume)
    return rows


def test_a_two_objective_sweep_over_perplexity_and_size_with_a_perplexity_limit(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = ["perplexity", "size_mb"]
    result = Sweep.from_yaml(
        SMOKE, trials=3, storage=str(tmp_path / "runs"), tracking_uri=uri, objectives=names, initial_points=POINTS,
        constraints={"max_perplexity": 30.0}, **{"distill.steps": 40, "task.eval_tokens": 20_000},
    ).run()
    t = result.trials.set_index("width").sort_values("size_mb")
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    # the limit on a non-default objective: the smallest (narrow, 4-bit, sparse) student misses it, so it is
    # off the front although nothing dominates it, and Optuna was told
    smallest = result.trials.sort_values("size_mb").iloc[0]
    assert smallest["perplexity"] > 30.0 and not smallest["feasible"] and not smallest["pareto"]
    assert (result.trials["feasible"] == (result.trials["perplexity"] <= 30.0)).all()
    assert result.pareto["perplexity"].max() <= 30.0
    rows = _check_front_and_hypervolume(result, uri, names)
    # the splits hold fewer positions than asked: every score says how many, and every run carries a warning
    client = MlflowClient(uri)
    assert (result.trials["eval_positions"] < 20_000).all()
    assert client.get_run(result.run_id).data.tags["warning"].startswith("teacher: the val split scored")
    for run_id in result.trials["run_id"]:
        assert "fewer than task.eval_tokens = 20000" in client.get_run(run_id).data.tags["warning"]
    assert {r["trial_id"] for r in rows if not r["feasible"]} == set(result.trials.loc[~result.trials["feasible"], "trial_id"])
    sweep_id = MlflowClient(uri).get_run(result.run_id).data.tags["sweep_id"]
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{tmp_path / 'runs' / 'sweeps' / sweep_id / 'optuna.db'}")
    assert [d.name for d in study.directions] == ["MINIMIZE", "MINIMIZE"]
    for trial in study.trials:  # Optuna got (perplexity, size) and the perplexity limit's violation
        assert trial.constraints == {"max_perplexity": pytest.approx(trial.values[0] - 30.0)}
    assert result.recommend()["perplexity"] <= 30.0
    # the plot of two objectives, and the files a person opens
    assert {p.name for p in (tmp_path / "runs" / "sweeps" / sweep_id).glob("pareto.*")} == {"pareto.csv", "pareto.html", "pareto.png"}


def test_four_objectives_with_peak_memory_measured_one_model_at_a_time(ray_session, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    names = ["accuracy", "size_mb", "latency_ms", "peak_memory_mb"]
    result = Sweep.from_yaml(
        SMOKE, trials=4, storage=str(tmp_path / "runs"), tracking_uri=uri, objectives=names, initial_points=POINTS,
        max_concurrent_trials=2, reference_point={"peak_memory_mb": 1000.0},
        **{"distill.steps": 20, "resources.cpus_per_worker": 0.5},
    ).run()
    t = result.trials
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    assert (t["peak_memory_mb"] > 0).all() and (t["peak_memory_mb"] < 1000).all()
    assert result.teacher.metrics["peak_memory_mb"] > 0
    rows = _check_front_and_hypervolume(result, uri, names)
    assert result.hypervolume > 0
    for row in rows:
        assert row["time_measure_wait_s"] >= 0 and row["measure_ended_at"] > row["measure_started_at"]
    # the service measures one model at a time: no two trials' measurements overlap, though two trials ran at once
    spans = sorted((r["measure_started_at"], r["measure_ended_at"]) for r in rows)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end
    runs = [MlflowClient(uri).get_run(r).info for r in t["run_id"]]
    assert any(a.start_time < b.end_time and b.start_time < a.end_time for a, b in itertools.combinations(runs, 2))
    sweep_dir = next((tmp_path / "runs" / "sweeps").iterdir())
    assert (sweep_dir / "pareto.png").stat().st_size > 0  # every pair of the four objectives


def test_an_objective_registered_in_your_process_is_measured_searched_and_fronted(ray_session, tmp_path, bits_per_char):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = Sweep.from_yaml(SMOKE, trials=2, storage=str(tmp_path / "runs"), tracking_uri=uri,
                             objectives=["bits_per_char", "size_mb"], **{"distill.steps": 10}).run()
    t = result.trials
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    assert np.allclose(t["bits_per_char"], np.log2(t["perplexity"])) and np.allclose(t["test_bits_per_char"], np.log2(t["test_perplexity"]))
    assert result.teacher.metrics["bits_per_char"] == pytest.approx(math.log2(result.teacher.perplexity))
    _check_front_and_hypervolume(result, uri, ["bits_per_char", "size_mb"])
