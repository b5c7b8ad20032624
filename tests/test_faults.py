"""Faults, with real processes and real signals: `orchestrator sweep` stopped by Ctrl-C (SIGINT), SIGTERM
or SIGKILL mid-trial, then finished by `--resume`. Checked in Tune's files, the Optuna study, MLflow and
the sweep's own files: nothing left RUNNING, nothing lost or run twice, one parent run."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.pareto import pareto_mask
from tests import harness
from tests.servers import listening, loopback

SMOKE = Path(__file__).parents[1] / "search_spaces" / "smoke.yaml"
ARGS = ["--trials", "3", "--set", "distill.steps=300", "--set", "experiment=faults"]  # trials long enough to stop mid-way

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")  # one storage: the teacher is built once for every sweep here


def _start(root: Path, name: str, seed: int, *args: str):
    """The smoke sweep in its own process group; each samples with its own `seed`, so that no trial reuses
    another sweep's student (and ends at once)."""
    return harness.start(root, name, SMOKE, *ARGS, "--set", f"sampler_seed={seed}", *args)


def _state(root: Path, sweep_id: str) -> dict:
    return harness.state(root, sweep_id, "faults")


def _front_matches_completed_trials(state: dict) -> None:
    """The sweep's pareto.csv is the front of its completed trials, computed again here."""
    table = pd.DataFrame(state["rows"])
    done = table[table["status"] == "COMPLETED"].reset_index(drop=True)
    objectives = ["accuracy", "size_mb", "latency_ms"]
    expected = set(done.loc[pareto_mask(done[objectives].to_numpy(float), ["max", "min", "min"]), "trial_id"])
    assert set(pd.read_csv(state["files"] / "pareto.csv")["trial_id"]) == expected


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_interrupted_sweep_closes_its_trials_writes_its_front_and_resumes(root, sig):
    proc, log = _start(root, f"stopped-{sig.name}", int(sig))
    try:
        harness.wait_for_text(proc, log, "[1/3] trial-0001")
        if sig == signal.SIGTERM:  # while it runs: every socket of the sweep's own Ray listens on the loopback only
            exposed = {name: addresses for name, addresses in listening(proc.pid).items()
                       if not all(loopback(a) for a in addresses)}
            assert listening(proc.pid) and not exposed, exposed
        harness.wait_for_trial(root, proc, "faults", 2)
        proc.send_signal(sig)
    finally:
        code = harness.finish(proc)
    text = log.read_text()
    assert code == 128 + sig, text[-3000:]
    assert f"orchestrator: {sig.name}: stopped with 1 of 3 trials ended. Finish it with: orchestrator sweep" in text
    sweep_id = harness.sweep_id(log)
    state = _state(root, sweep_id)
    assert [p.info.status for p in state["parents"]] == ["KILLED"]
    assert [(c.info.run_name, c.info.status) for c in state["children"]] == [("trial-0001", "FINISHED"), ("trial-0002", "KILLED")]
    assert [(t.state.name, t.user_attrs.get("interrupted")) for t in state["study"].trials] == [("COMPLETE", None), ("FAIL", True)]
    for name in ("pareto.csv", "pareto.html", "pareto.png"):  # the front of what finished, in storage and in MLflow
        assert (state["files"] / name).exists()
    parent_files = {a.path for a in state["client"].list_artifacts(state["parents"][0].info.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png", "trials.csv"} <= parent_files
    if sig == signal.SIGTERM:
        return

    interrupted = state["study"].trials[1]
    proc, log = _start(root, "resumed", int(sig), "--resume", sweep_id)
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    state = _state(root, sweep_id)
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "FINISHED"  # the same run, finished
    statuses = [(c.info.run_name, c.info.status) for c in state["children"]]
    assert statuses == [("trial-0001", "FINISHED"), ("trial-0002", "KILLED"), ("trial-0003", "FINISHED"), ("trial-0004", "FINISHED")]
    trials = state["study"].trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].user_attrs["rerun_of"] == interrupted.number and trials[2].params == interrupted.params  # rerun as it was
    assert [r["status"] for r in state["rows"]] == ["COMPLETED"] * 3 and len({r["trial_id"] for r in state["rows"]}) == 3
    # Tune ran trial 1, the rerun and trial 3; the stopped trial may have reported as Tune wound down, but the
    # sweep had stopped listening: that result counts nowhere, and its configuration ran again
    assert len(state["tune_trials"]) in (3, 4)
    _front_matches_completed_trials(state)


def test_a_killed_driver_leaves_a_sweep_that_resume_finishes_with_one_parent_run(root):
    proc, log = _start(root, "killed", 9)
    try:
        harness.wait_for_text(proc, log, "[1/3] trial-0001")
        harness.wait_for_trial(root, proc, "faults", 2)
        sweep_id = harness.sweep_id(log)
        proc.send_signal(signal.SIGKILL)
    finally:
        assert harness.finish(proc) == -signal.SIGKILL
    state = _state(root, sweep_id)  # what a killed driver leaves: RUNNING everywhere, no front files
    assert [p.info.status for p in state["parents"]] == ["RUNNING"]
    assert [c.info.status for c in state["children"]] == ["FINISHED", "RUNNING"]
    assert [t.state.name for t in state["study"].trials] == ["COMPLETE", "RUNNING"]
    assert not (state["files"] / "pareto.csv").exists()
    killed_params = state["study"].trials[1].params

    started = time.monotonic()
    proc, log = _start(root, "killed-resumed", 9, "--resume", sweep_id)
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "1 trial run(s) its driver left RUNNING closed KILLED" in text
    assert "1 trial(s) a killed driver left RUNNING told FAIL; 1 interrupted configuration(s) queued" in text
    state = _state(root, sweep_id)
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "FINISHED"
    assert state["parents"][0].data.tags["stale_runs_closed"] == "1"
    assert [c.info.status for c in state["children"]] == ["FINISHED", "KILLED", "FINISHED", "FINISHED"]
    assert sum(c.info.status == "FINISHED" for c in state["children"]) == len(state["rows"]) == 3  # one per completed trial
    assert "driver stopped before this trial finished" in state["children"][1].data.tags["error"]
    trials = state["study"].trials
    assert not [t for t in trials if t.state.name == "RUNNING"]
    assert trials[2].params == killed_params and trials[2].user_attrs["rerun_of"] == 1
    _front_matches_completed_trials(state)
    assert time.monotonic() - started < 240
