"""A sweep a killed driver left open, resumed: the Optuna side (trials settled from trials.jsonl or told FAIL,
interrupted configurations queued again), the tracker side (the parent run reopened) and what `--resume`
accepts, on real sweep files, a real Optuna study and the in-memory tracker. Seconds, no Ray, no MLflow."""

import optuna
import pytest
import yaml

from orchestrator import ConfigError
from orchestrator.config import load_config
from orchestrator.engine.context import resolve
from orchestrator.engine.recovery import INTERRUPTED, RERUN_OF, check_resume, recover_study
from orchestrator.engine.search import TUNE_TRIAL_ID
from orchestrator.io.records import Status, TrialOutcome, TrialRecord
from orchestrator.io.sweep_files import CONFIG_FILE, SweepFiles
from orchestrator.tracking.memory import MemoryTracker
from orchestrator.tracking.sweep_runs import ROLE_TAG, SweepRuns

SPACE = {"params": {"sparsity": {"choices": [0.0, 0.3, 0.6]}}, "objectives": ["accuracy", "size_mb"]}
SWEEP = "sweep-1"


@pytest.fixture
def killed(tmp_path):
    """What a driver SIGKILLed mid-sweep leaves: its config and trials.jsonl, a study with two RUNNING trials (one
    it had recorded, one it had not), and its runs RUNNING in the tracker."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ctx = resolve(load_config(None, overrides={**SPACE, "storage": str(tmp_path / "runs")}))
    files = SweepFiles(ctx.storage, SWEEP)
    files.write_text(CONFIG_FILE, yaml.safe_dump(ctx.config.to_dict(), sort_keys=False))
    study = optuna.create_study(study_name=SWEEP, storage=files.study_url(None), directions=["maximize", "minimize"])
    dist = {"sparsity": optuna.distributions.CategoricalDistribution([0.0, 0.3, 0.6])}
    for trial_id, sparsity in (("t1", 0.0), ("t2", 0.3), ("t3", 0.6)):
        trial = study.ask(dist)
        trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
        assert trial.params == {"sparsity": trial.params["sparsity"]}
    study.tell(0, [0.4, 0.3])
    outcome = TrialOutcome(status="COMPLETED", metrics={"accuracy": 0.5, "size_mb": 0.2})
    for trial_id in ("t1", "t2"):  # t2 recorded, not told: the driver died in between
        files.append_record(TrialRecord(trial_id=trial_id, status=Status.COMPLETED, params={}, outcome=outcome))
    tracker = MemoryTracker()
    runs = SweepRuns(tracker, SWEEP)
    runs.start(params={}, tags={}, description="", metrics={})
    for trial_id in ("t1", "t2", "t3"):
        runs.start_trial(trial_id, {})
    return ctx, files, tracker


def test_resume_settles_the_study_a_killed_driver_left_and_queues_what_it_interrupted(killed):
    ctx, files, tracker = killed
    previous = check_resume(ctx, SWEEP)
    assert [r.trial_id for r in previous] == ["t1", "t2"]
    runs = SweepRuns(tracker, SWEEP)
    runs.reopen({r.trial_id: r for r in previous})
    recover_study(ctx, files, runs, previous)

    study = optuna.load_study(study_name=SWEEP, storage=files.study_url(None))
    trials = study.get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]
    assert trials[1].values == [0.5, 0.2]  # settled from trials.jsonl, not rerun
    assert trials[2].user_attrs[INTERRUPTED] and trials[3].user_attrs[RERUN_OF] == 2  # t3 runs again, as it was
    assert trials[3].system_attrs["fixed_params"] == trials[2].params
    [parent] = tracker.find_runs({"sweep_id": SWEEP, ROLE_TAG: "sweep"})
    assert parent.tags["optuna_stale_closed"] == "1" and parent.tags["requeued"] == "1" and runs.stale_closed == 1


def test_resume_refuses_another_search_space_or_a_sweep_it_cannot_find_in_one_line(killed):
    ctx, _, _ = killed
    changed = resolve(load_config(None, overrides={**SPACE, "storage": ctx.storage.where, "params.sparsity": {"choices": [0.1]}}))
    with pytest.raises(ConfigError) as error:
        check_resume(changed, SWEEP)
    assert "`params.sparsity` is {'choices': [0.1]} here but {'choices': [0.0, 0.3, 0.6]} in that sweep" in str(error.value)
    assert "\n" not in str(error.value)
    other = resolve(load_config(None, overrides={**SPACE, "storage": ctx.storage.where, "objectives": ["accuracy", "latency_ms"]}))
    with pytest.raises(ConfigError, match="`objectives` are"):
        check_resume(other, SWEEP)
    with pytest.raises(ConfigError, match=f"no resumable sweep of that id .* sweep ids there: {SWEEP}"):
        check_resume(ctx, "sweep-that-never-ran")
