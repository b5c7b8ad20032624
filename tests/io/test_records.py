"""Records written and read back as themselves: a trial's outcome through Tune, trials.jsonl lines, versions."""

import pytest

from orchestrator.io.records import CacheStage, RecordError, Status, TrialOutcome, TrialRecord, from_json, to_json


def test_an_outcome_travels_through_a_tune_result_as_itself():
    outcome = TrialOutcome("COMPLETED", {"accuracy": 0.4, "size_mb": 0.1, "latency_ms": 1.5, "test_accuracy": 0.38},
                           cache_hits={"teacher": True, "distill": False}, timings={"time_distill_s": 3.0}, artifact="a.orc")
    result = {**outcome.report(["accuracy", "size_mb", "latency_ms"]), "done": True, "training_iteration": 1}  # Tune adds its own keys
    assert {k: result[k] for k in ("accuracy", "size_mb", "latency_ms")} == {"accuracy": 0.4, "size_mb": 0.1, "latency_ms": 1.5}  # what Optuna reads
    assert "test_accuracy" not in result and outcome.report(["size_mb", "accuracy"]).keys() == {"size_mb", "accuracy", "outcome"}
    assert TrialOutcome.from_result(result) == outcome and TrialOutcome.from_result({"done": True}) is None
    assert outcome.row()["cache_hit_teacher"] == 1.0 and outcome.row()["cache_hit_distill"] == 0.0


def test_a_trial_record_is_one_versioned_json_line_read_back_as_itself():
    outcome = TrialOutcome(Status.COMPLETED, {"accuracy": 0.4}, {CacheStage.GPTQ: True}, curves={"distill_loss": [[1, 2.0]]})
    record = TrialRecord("t1", Status.COMPLETED, {"bits": 4, "optimizer": "sgd"}, run_name="trial-0001", outcome=outcome)
    line = to_json(record)
    assert "\n" not in line and line.startswith('{"version":1,')
    assert from_json(TrialRecord, line) == record
    assert record.row()["cache_hit_gptq"] == 1.0 and record.row()["bits"] == 4 and record.objective_values(["accuracy"]) == [0.4]
    failed = TrialRecord("t2", "ERROR", {"bits": 4}, error="FloatingPointError: training diverged")
    assert from_json(TrialRecord, to_json(failed)).objective_values(["accuracy"]) is None


def test_a_record_of_another_format_is_refused_in_one_line():
    with pytest.raises(RecordError, match="format None, written by another version of orchestrator"):
        from_json(TrialRecord, '{"trial_id": "t1", "status": "COMPLETED", "params": {}}')
