"""Faults, with real processes and real signals: `orchestrator sweep` stopped by Ctrl-C (SIGINT), SIGTERM
or SIGKILL mid-trial, then finished by `--resume`. Checked in Tune's files, the Optuna study, MLflow and
the sweep's own files: nothing left RUNNING, nothing lost or run twice, one parent run."""

from __future__ import annotations

import shutil
import signal
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from orchestrator.core.pareto import pareto_mask
from tests import harness
from tests.servers import listening, loopback

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
ARGS = ["--trials", "4", "--set", "distill.steps=1000", "--set", "experiment=faults"]  # trials long enough to stop mid-way (~3 s)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("faults")  # one storage: the teacher is built once for every sweep here


def _start(root: Path, name: str, seed: int, *args: str, env: dict[str, str] | None = None):
    """The smoke sweep in its own process group; each samples with its own `seed`, so that no trial reuses
    another sweep's student (and ends at once)."""
    return harness.start(root, name, SMOKE, *ARGS, "--set", f"sampler_seed={seed}", *args, env=env)


def _state(root: Path, sweep_id: str) -> dict:
    return harness.state(root, sweep_id, "faults")


def _front_matches_completed_trials(state: dict) -> None:
    """The sweep's pareto.csv is the front of its completed trials, computed again here."""
    table = pd.DataFrame(state["rows"])
    done = table[table["status"] == "COMPLETED"].reset_index(drop=True)
    objectives = ["accuracy", "size_mb", "latency_ms"]
    expected = set(done.loc[pareto_mask(done[objectives].to_numpy(float), ["max", "min", "min"]), "trial_id"])
    assert set(pd.read_csv(state["files"] / "pareto.csv")["trial_id"]) == expected


def _stop_in_trial(root: Path, proc, log: Path, number: int, sig: signal.Signals, *, check_sockets: bool = False) -> int:
    """Send `sig` once trial `number` has started; the exit code."""
    try:
        if check_sockets:  # while a trial runs: every socket of the sweep's own Ray listens on the loopback only
            harness.wait_for_trial(root, proc, "faults", 1)
            exposed = {name: addresses for name, addresses in listening(proc.pid).items()
                       if not all(loopback(a) for a in addresses)}
            assert listening(proc.pid) and not exposed, exposed
        harness.wait_for_text(proc, log, f"/4] trial-{number - 1:04d}")
        harness.wait_for_trial(root, proc, "faults", number)
        proc.send_signal(sig)
    finally:
        code = harness.finish(proc)
    return code


def _stopped_cleanly(root: Path, log: Path, code: int, sig: signal.Signals) -> dict:
    """Exit 128 + signal, the resume command printed, nothing RUNNING, the front of what finished written."""
    text = log.read_text()
    assert code == 128 + sig, text[-3000:]
    assert f"orchestrator: {sig.name}: stopped with 1 of 4 trials ended. Finish it with: orchestrator sweep" in text
    state = _state(root, harness.sweep_id(log))
    assert [p.info.status for p in state["parents"]] == ["KILLED"]
    assert [(c.info.run_name, c.info.status) for c in state["children"]] == [("trial-0001", "FINISHED"), ("trial-0002", "KILLED")]
    assert [(t.state.name, t.user_attrs.get("interrupted")) for t in state["study"].trials] == [("COMPLETE", None), ("FAIL", True)]
    for name in ("pareto.csv", "pareto.html", "pareto.png"):  # the front of what finished, in storage and in MLflow
        assert (state["files"] / name).exists()
    parent_files = {a.path for a in state["client"].list_artifacts(state["parents"][0].info.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png", "trials.csv"} <= parent_files
    return state


def test_sigterm_stops_a_sweep_cleanly_whose_ray_listens_on_the_loopback_only(root):
    proc, log = _start(root, "sigterm", 15)
    code = _stop_in_trial(root, proc, log, 2, signal.SIGTERM, check_sockets=True)
    _stopped_cleanly(root, log, code, signal.SIGTERM)


def test_a_sweep_interrupted_then_its_driver_killed_is_finished_by_resume_with_one_parent_run(root):
    # Ctrl-C during trial 2: closed cleanly
    proc, log = _start(root, "sigint", 2)
    state = _stopped_cleanly(root, log, _stop_in_trial(root, proc, log, 2, signal.SIGINT), signal.SIGINT)
    sweep_id, interrupted = harness.sweep_id(log), state["study"].trials[1]

    # resumed: the interrupted configuration runs again (trial 3); the driver is SIGKILLed during trial 4
    proc, log = _start(root, "resumed-killed", 2, "--resume", sweep_id)
    try:
        harness.wait_for_trial(root, proc, "faults", 4)
        proc.send_signal(signal.SIGKILL)
    finally:
        assert harness.finish(proc) == -signal.SIGKILL
    state = _state(root, sweep_id)  # what a killed driver leaves: RUNNING everywhere
    assert [p.info.status for p in state["parents"]] == ["RUNNING"]
    assert [c.info.status for c in state["children"]] == ["FINISHED", "KILLED", "FINISHED", "RUNNING"]
    trials = state["study"].trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "RUNNING"]
    assert trials[2].user_attrs["rerun_of"] == interrupted.number and trials[2].params == interrupted.params  # rerun as it was
    killed = trials[3]

    # resumed again: the sweep finishes, leaving nothing in the temp directory but Ray's own session files, and
    # printing its own lines, not Tune's banners
    temp = Path(tempfile.mkdtemp(prefix="fp"))  # short: Ray's sockets go under it
    proc, log = _start(root, "resumed", 2, "--resume", sweep_id, env={"TMPDIR": str(temp)})
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    left = sorted(p.name for p in temp.iterdir() if p.name != "ray")
    shutil.rmtree(temp, ignore_errors=True)
    assert left == []
    text = log.read_text()
    for banner in ("Configuration for experiment", "View detailed results here", "TensorBoard", "Wrote the latest version"):
        assert banner not in text
    assert "1 trial run(s) its driver left RUNNING closed KILLED" in text
    assert "1 trial(s) a killed driver left RUNNING told FAIL; 1 interrupted configuration(s) queued" in text
    state = _state(root, sweep_id)
    assert len(state["parents"]) == 1 and state["parents"][0].info.status == "FINISHED"  # one parent run, finished
    assert state["parents"][0].data.tags["stale_runs_closed"] == "1"
    statuses = [(c.info.run_name, c.info.status) for c in state["children"]]
    assert statuses == [("trial-0001", "FINISHED"), ("trial-0002", "KILLED"), ("trial-0003", "FINISHED"),
                        ("trial-0004", "KILLED"), ("trial-0005", "FINISHED"), ("trial-0006", "FINISHED")]
    assert "driver stopped before this trial finished" in state["children"][3].data.tags["error"]
    trials = state["study"].trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[4].user_attrs["rerun_of"] == killed.number and trials[4].params == killed.params
    rows = state["rows"]
    assert [r["status"] for r in rows] == ["COMPLETED"] * 4 and len({r["trial_id"] for r in rows}) == 4  # none twice
    assert sum(c.info.status == "FINISHED" for c in state["children"]) == 4  # one FINISHED run per completed trial
    # Tune's own files: every trial that reported its outcome to Tune is recorded (one that finished as Tune wound
    # down after Ctrl-C too: recorded then, not run again); a SIGKILLed driver may not have written the last result
    # file of a trial the sweep had recorded
    assert state["tune_ids"] <= {r["trial_id"] for r in rows} and len(state["tune_ids"]) >= 3
    _front_matches_completed_trials(state)


def test_a_sweep_interrupted_mid_rung_resumes_and_finishes_the_rung(root):
    """Successive halving (fidelity, one rung at step 600 of 1200): Ctrl-C after the first student's judgement, while
    the second trains; `--resume` keeps the rung's judgements, and every student trained in either run is judged
    at the rung, in order, by the promotion rule against the ones judged before it."""
    import numpy as np

    from orchestrator.core.fidelity import promoted
    from orchestrator.io.storage import Storage
    from orchestrator.io.sweep_files import SweepFiles

    halving = ["--set", "fidelity.enabled=true", "--set", "fidelity.eta=2", "--set", "fidelity.rungs=1",
               "--set", "distill.steps=1200"]  # a trial of a few seconds: the signal lands in it
    proc, log = _start(root, "halving", 31, *halving)
    try:
        harness.wait_for_text(proc, log, "/4] trial-0001")  # the first trial ended, judged at the rung first
        harness.wait_for_trial(root, proc, "faults", 2)
        proc.send_signal(signal.SIGINT)
    finally:
        code = harness.finish(proc)
    assert code == 130, log.read_text()[-3000:]
    sweep = harness.sweep_id(log)
    files = SweepFiles(Storage(str(root / "runs")), sweep)
    before = files.read_rungs()
    assert before and before[0].promoted  # the first student had nothing to rank against
    proc, resumed_log = _start(root, "halving-resumed", 31, *halving, "--resume", sweep)
    assert harness.finish(proc) == 0, resumed_log.read_text()[-3000:]
    after = files.read_rungs()
    assert after[:len(before)] == before  # the rung's judgements survived the interruption
    rows = _state(root, sweep)["rows"]
    # every student trained as far as the rung (one that converged before it, `distill.patience`, is never judged)
    trained = {r["trial_id"] for r in rows if r["status"] == "STOPPED" or r.get("distill_steps", 0) >= 600}
    assert trained <= {r.trial_id for r in after} and {r.step for r in after} == {600}
    names = ["accuracy", "size_mb", "latency_ms"]
    for i, r in enumerate(after):
        earlier = np.array([[p.point[n] for n in names] for p in after[:i] if p.trial_id != r.trial_id]).reshape(-1, 3)
        assert promoted([r.point[n] for n in names], earlier, ["max", "min", "min"], 2) == (r.promoted, r.place, r.size)
    status = {r["trial_id"]: r["status"] for r in rows}
    for r in after:
        if r.trial_id in status:  # judged in a trial that ended (not the one interrupted)
            assert status[r.trial_id] == ("COMPLETED" if r.promoted else "STOPPED")

