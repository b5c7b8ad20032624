"""What a sweep records, start to end, written once against the tracker interface: the same contract on the
in-memory tracker and on MLflow (a SQLite store), read back through the interface. Seconds, no Ray."""

import pytest

from orchestrator.io.records import Status, TrialOutcome, TrialRecord
from orchestrator.tracking.base import FAILED, FINISHED, KILLED, RUNNING
from orchestrator.tracking.memory import MemoryTracker
from orchestrator.tracking.mlflow_store import MlflowTracker
from orchestrator.tracking.sweep_runs import PARENT_TAG, ROLE_TAG, SweepRuns


@pytest.fixture(params=["memory", "mlflow"])
def tracker(request, tmp_path):
    if request.param == "memory":
        return MemoryTracker("contract")
    return MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "contract")


def _completed(trial_id, accuracy, artifact=None):
    outcome = TrialOutcome(status="COMPLETED", metrics={"accuracy": accuracy, "size_mb": 0.5}, cache_hits={"distill": True},
                           timings={"time_distill_s": 1.5}, artifact=artifact, curves={"distill_loss": [[1, 2.0], [20, 1.0]]},
                           tags={"node": "n1"})
    return TrialRecord(trial_id=trial_id, status=Status.COMPLETED, params={"bits": 4}, outcome=outcome)


def _runs(tracker, sweep_id="sweep-1"):
    return SweepRuns(tracker, sweep_id, trial_tags={"task": "char_lm"}, describe=lambda p: f"Quantize to {p['bits']} bits.")


def _children(tracker, parent):
    return {r.name: r for r in tracker.find_runs({PARENT_TAG: parent})}


def test_a_sweep_is_one_parent_run_with_a_child_run_per_trial_in_start_order(tracker, tmp_path):
    runs = _runs(tracker)
    parent = runs.start(params={"trials": 2, "params": {"bits": 4}}, tags={"objectives": "accuracy,size_mb"},
                        description="a sweep", metrics={"teacher_accuracy": 0.5})
    runs.start_trial("t-a", {"bits": 4})
    runs.start_trial("t-b", {"bits": 8})
    (tmp_path / "model.orc").write_bytes(b"packed")
    (tmp_path / "error.txt").write_text("Traceback ...\nValueError: diverged\n")
    runs.finish_trial(_completed("t-a", 0.42, artifact=str(tmp_path / "model.orc")))
    runs.finish_trial(TrialRecord(trial_id="t-b", status=Status.ERROR, params={"bits": 8}, error="ValueError: diverged",
                                  error_file=str(tmp_path / "error.txt")))
    runs.log({"hypervolume": 0.25}, step=2)
    runs.end(FINISHED)

    [sweep] = tracker.find_runs({"sweep_id": "sweep-1", ROLE_TAG: "sweep"})
    assert sweep.run_id == parent and sweep.name == "sweep-1" and sweep.status == FINISHED
    assert sweep.params["params.bits"] == "4" and sweep.metrics["hypervolume"] == 0.25 and sweep.tags["objectives"] == "accuracy,size_mb"
    children = _children(tracker, parent)
    assert list(children) == ["trial-0001", "trial-0002"]
    done, failed = children["trial-0001"], children["trial-0002"]
    assert (done.status, failed.status) == (FINISHED, FAILED)
    assert done.metrics["accuracy"] == 0.42 and done.metrics["cache_hit_distill"] == 1.0 and done.metrics["time_distill_s"] == 1.5
    assert done.metrics["distill_loss"] == 1.0  # a curve: its latest point
    assert done.tags["cache_hit.distill"] == "true" and done.tags["pareto"] == "false" and done.tags["node"] == "n1"
    assert done.tags["artifact"].endswith("model.orc") and done.tags["task"] == "char_lm"
    assert done.tags["mlflow.note.content"] == "Quantize to 4 bits." and done.params["bits"] == "4"
    assert failed.tags["error"] == "ValueError: diverged" and "accuracy" not in failed.metrics
    assert runs.run_names == {"t-a": "trial-0001", "t-b": "trial-0002"} and not tracker.failures


def test_a_sweep_stopped_mid_trial_closes_its_open_trial_runs_killed(tracker):
    runs = _runs(tracker)
    parent = runs.start(params={}, tags={}, description="", metrics={})
    runs.start_trial("t-a", {"bits": 4})
    runs.start_trial("t-b", {"bits": 8})
    runs.finish_trial(_completed("t-a", 0.4))
    runs.end(KILLED)
    children = _children(tracker, parent)
    assert [r.status for r in children.values()] == [FINISHED, KILLED]
    assert children["trial-0002"].tags["error"] == "the sweep stopped before this trial finished"
    assert tracker.find_runs({PARENT_TAG: parent})[0].status == FINISHED


def test_reopening_a_killed_drivers_sweep_settles_its_running_trial_runs_and_counts_on(tracker):
    first = _runs(tracker)
    parent = first.start(params={}, tags={}, description="", metrics={})
    for trial_id in ("t-a", "t-b", "t-c"):
        first.start_trial(trial_id, {"bits": 4})
    first.finish_trial(_completed("t-a", 0.4))  # then the driver is killed: t-b recorded in trials.jsonl, t-c not

    again = _runs(tracker)
    assert again.reopen({"t-b": _completed("t-b", 0.45)}) == parent
    assert again.stale_closed == 1 and again.last_number == 3
    children = _children(tracker, parent)
    assert children["trial-0002"].status == FINISHED and children["trial-0002"].metrics["accuracy"] == 0.45
    assert "recovered" in children["trial-0002"].tags
    assert children["trial-0003"].status == KILLED and "--resume" in children["trial-0003"].tags["error"]
    assert tracker.find_runs({"sweep_id": "sweep-1", ROLE_TAG: "sweep"})[0].status == RUNNING
    again.start_trial("t-d", {"bits": 8})  # the resumed sweep counts on
    assert list(_children(tracker, parent))[-1] == "trial-0004"
    assert _runs(tracker, "another-sweep").reopen({}) is None


def test_an_unreachable_tracker_costs_warnings_never_an_exception():
    tracker = MemoryTracker()
    runs = _runs(tracker)
    runs.start(params={}, tags={}, description="", metrics={})
    tracker.unreachable = True
    assert runs.start_trial("t-a", {"bits": 4}) is None
    runs.finish_trial(_completed("t-a", 0.4))  # its run was never made: nothing to record, nothing raised
    runs.log({"hypervolume": 0.1}, step=1)
    runs.end(FINISHED)
    assert len(tracker.failures) == 3 and all("unreachable" in f for f in tracker.failures)
    with pytest.raises(ConnectionError):  # only the sweep's own run must be made
        _runs(tracker, "sweep-2").start(params={}, tags={}, description="", metrics={})
