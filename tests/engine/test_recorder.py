"""The sweep's recorder, driven as Tune drives it, on a real Optuna searcher, real sweep files and the in-memory
tracker: each trial is written to trials.jsonl, then told to Optuna, then tracked, in that order; a tracker
that fails loses no trial. Seconds, no Ray cluster, no MLflow."""

from types import SimpleNamespace

import optuna
import pytest
from ray.tune.experiment import Trial

from orchestrator.config import load_config
from orchestrator.engine.context import resolve
from orchestrator.engine.recorder import FailureLimit, Recorder
from orchestrator.engine.search import TUNE_TRIAL_ID, make_searcher
from orchestrator.io.records import TrialOutcome
from orchestrator.io.sweep_files import SweepFiles
from orchestrator.tracking.base import FAILED, FINISHED
from orchestrator.tracking.memory import MemoryTracker
from orchestrator.tracking.sweep_runs import PARENT_TAG, SweepRuns

SPACE = {"params": {"sparsity": {"choices": [0.0, 0.3, 0.6]}, "bits": {"choices": [4, 8]}}, "sampler": "random",
         "trials": 4, "objectives": ["accuracy", "size_mb"]}


class OrderCheckingTracker(MemoryTracker):
    """Asserts, whenever a trial's run ends, that trials.jsonl and the Optuna study already have the trial."""

    def __init__(self, files: SweepFiles) -> None:
        super().__init__()
        self.files, self.checked = files, []

    def end_run(self, run_id: str, status: str) -> None:
        trial_id = self.runs[run_id].tags.get("trial_id")
        if trial_id is not None:
            assert trial_id in {r.trial_id for r in self.files.read_records()}, "tracked before it was recorded"
            study = optuna.load_study(study_name=self.files.sweep_id, storage=self.files.study_url(None))
            told = {t.user_attrs.get(TUNE_TRIAL_ID): t.state for t in study.trials}
            assert told[trial_id] != optuna.trial.TrialState.RUNNING, "tracked before Optuna was told"
            self.checked.append(trial_id)
        super().end_run(run_id, status)


@pytest.fixture
def sweep(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = resolve(load_config(None, overrides={**SPACE, "storage": str(tmp_path / "runs")}))
    files = SweepFiles(ctx.storage, "sweep-1")
    files.path().mkdir(parents=True)
    tracker = OrderCheckingTracker(files)
    runs = SweepRuns(tracker, "sweep-1")
    runs.start(params={}, tags={}, description="", metrics={})
    searcher = make_searcher(ctx, files, None)
    progress = []
    recorder = Recorder(ctx, runs, files=files, total=4, reference={"accuracy": 0.0, "size_mb": 1.0}, progress=progress.append)
    recorder.tell = searcher.tell
    return SimpleNamespace(ctx=ctx, files=files, tracker=tracker, runs=runs, searcher=searcher, recorder=recorder,
                           progress=progress, tmp_path=tmp_path)


def _run_trial(s, trial_id, *, metrics=None, status="COMPLETED", error=None):
    """One trial as Tune runs it: suggested, started, ended (the searcher hears first, then the callbacks)."""
    config = s.searcher.suggest(trial_id)
    trial = Trial("tune_trial", stub=True, config=config, trial_id=trial_id)  # Tune's own, as the callbacks get it
    s.recorder.on_trial_start(0, [], trial)
    if error is not None:  # it reported once (its config counted by Tune), then failed; a stub has no error file
        trial.update_last_result({"trial_id": trial_id, "training_iteration": 1, "config": config})
        trial = SimpleNamespace(trial_id=trial_id, config=config, run_metadata=trial.run_metadata)
        trial.error_file = str(s.tmp_path / f"{trial_id}.txt")
        (s.tmp_path / f"{trial_id}.txt").write_text(f"Traceback (most recent call last):\n  ...\n{error}\n")
        s.searcher.on_trial_complete(trial_id, None, error=True)
        s.recorder.on_trial_error(0, [], trial)
        return trial
    outcome = TrialOutcome(status=status, metrics=metrics or {}, stop_reason="dominated" if status == "STOPPED" else None)
    trial.update_last_result({**outcome.report(["accuracy", "size_mb"]), "trial_id": trial_id, "training_iteration": 1,
                              "config": config, "time_total_s": 1.0})
    s.searcher.on_trial_complete(trial_id, trial.last_result)
    s.recorder.on_trial_complete(0, [], trial)
    return trial


def test_each_trial_is_recorded_then_told_then_tracked(sweep):
    _run_trial(sweep, "t1", metrics={"accuracy": 0.4, "size_mb": 0.2})
    _run_trial(sweep, "t2", metrics={"accuracy": 0.5, "size_mb": 0.1})
    _run_trial(sweep, "t3", status="STOPPED")
    _run_trial(sweep, "t4", error="FloatingPointError: training diverged: loss nan")
    assert sweep.tracker.checked == ["t1", "t2", "t3", "t4"]  # every check passed as each run ended

    records = sweep.files.read_records()
    assert [(r.trial_id, r.status.value, r.run_name) for r in records] == [
        ("t1", "COMPLETED", "trial-0001"), ("t2", "COMPLETED", "trial-0002"), ("t3", "STOPPED", "trial-0003"),
        ("t4", "ERROR", "trial-0004")]
    assert records[3].error == "FloatingPointError: training diverged: loss nan" and records[3].outcome is None
    study = optuna.load_study(study_name="sweep-1", storage=sweep.files.study_url(None))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    assert study.trials[1].values == [0.5, 0.1]
    runs = {r.name: r for r in sweep.tracker.find_runs({PARENT_TAG: sweep.runs.parent_id})}
    assert [r.status for r in runs.values()] == [FINISHED, FINISHED, FINISHED, FAILED]
    assert runs["trial-0003"].tags["early_stopped"] == "true"

    last = sweep.progress[-1]  # what the CLI prints: the tally after each trial
    assert [p.done for p in sweep.progress] == [1, 2, 3, 4] and last.total == 4
    assert (last.failed, last.stopped, last.front_size) == (1, 1, 1) and last.hypervolume == pytest.approx(0.45)
    assert sweep.recorder.hypervolumes == [(1, pytest.approx(0.32)), (2, pytest.approx(0.45)), (3, pytest.approx(0.45)),
                                           (4, pytest.approx(0.45))]
    assert sweep.files.read_front(["accuracy", "size_mb"]).tolist() == [[0.5, 0.1]]


def test_what_tune_keeps_of_a_recorded_trial_is_its_id_and_objectives(sweep):
    """Tune's running statistics of every number a trial reported stay in the driver until the sweep ends: once the
    trial is recorded they are dropped, and its last result cut to its id and objectives (the 1,000-trial soak)."""
    ended = _run_trial(sweep, "t1", metrics={"accuracy": 0.4, "size_mb": 0.2})
    assert ended.run_metadata.metric_analysis == {} and ended.run_metadata.metric_n_steps == {}
    assert ended.last_result == {"trial_id": "t1", "training_iteration": 1, "accuracy": 0.4, "size_mb": 0.2}
    assert sweep.files.read_records()[0].outcome.metrics == {"accuracy": 0.4, "size_mb": 0.2}  # the outcome is recorded
    failed = _run_trial(sweep, "t2", error="FloatingPointError: training diverged: loss nan")
    assert failed.run_metadata.metric_analysis == {}


def test_a_tracker_that_fails_loses_no_trial_from_the_record_or_the_study(sweep):
    sweep.tracker.unreachable = True
    _run_trial(sweep, "t1", metrics={"accuracy": 0.4, "size_mb": 0.2})
    _run_trial(sweep, "t2", metrics={"accuracy": 0.5, "size_mb": 0.1})
    assert [r.trial_id for r in sweep.files.read_records()] == ["t1", "t2"]
    study = optuna.load_study(study_name="sweep-1", storage=sweep.files.study_url(None))
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert sweep.tracker.failures and [p.done for p in sweep.progress] == [1, 2]


def test_max_failures_stops_the_sweep_once_that_many_trials_failed(sweep):
    limit = FailureLimit(sweep.recorder, 2)
    _run_trial(sweep, "t1", error="RuntimeError: out of memory")
    assert not limit.stop_all()
    _run_trial(sweep, "t2", metrics={"accuracy": 0.4, "size_mb": 0.2})
    _run_trial(sweep, "t3", error="ValueError: bad weights")
    assert limit.stop_all() and sweep.recorder.failed_now == 2
