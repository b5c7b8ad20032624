"""Bad input: one line on stderr, exit 2, nothing started or written (through `cli.main` in this process,
and through the real console entry point in a subprocess)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _run(tmp_path, *args):
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "yaml_text,args,expect",
    [
        ("params: {bogus: 1}", [], "`params.bogus` is not a searchable parameter"),
        ("trials: many", [], "`trials` must be an integer, got 'many'"),
        ("params: {sparsity: 1.0}", [], "`params.sparsity` must be a number in [0, 1), got 1.0"),
        ("params: {bits: 12}", [], "`params.bits` must be one of 2..8, 16 or 32, got 12"),
        ("params: {temperature: -2}", [], "`params.temperature` must be a number > 0, got -2.0"),
        ("params: {lambda: -0.1}", [], "`params.lambda` must be a number >= 0, got -0.1"),
        ("params: {beta: -3}", [], "`params.beta` must be a number >= 0, got -3.0"),
        ("params: {bits: [4,", [], "not readable as YAML"),
        ("trials: 2", ["--set", "params.sparsity=1.5"], "--set params.sparsity: `params.sparsity` must be a number in [0, 1)"),
        ("trials: 2", ["--set", "distill.stepz=3"], "--set distill.stepz: `distill.stepz` is not a known key"),
        ("trials: 2", ["--trials", "0"], "`trials` must be an integer >= 1, got 0"),
        ("trials: 2", ["--tracking-uri", "nonsense"], "`tracking_uri` must be an MLflow URI"),
        ("trials: 2", ["--storage", "space.yaml"], "`storage` 'space.yaml' is a file"),
        ("trials: 2", ["--resume", "nope-123"], "--resume nope-123: no resumable sweep of that id under"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, yaml_text, args, expect):
    from orchestrator import cli

    space = tmp_path / "space.yaml"
    space.write_text(yaml_text)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # where a default storage or mlflow.db would land
    code = cli.main(["sweep", str(space), *args])
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator: error: "), err
    assert expect in lines[0]
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no storage


def test_missing_file(tmp_path):
    proc = _run(tmp_path, "nope.yaml")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "orchestrator: error: nope.yaml: no such file; pass the path of a search-space YAML (see search_spaces/)"
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_say_what_each_trial_did(capsys):
    from orchestrator.cli import print_progress
    from orchestrator.sweep import SweepProgress

    from orchestrator.outcome import TrialOutcome

    done = TrialOutcome("COMPLETED", {"accuracy": 0.3, "size_mb": 0.02, "latency_ms": 0.5}, cache_hits={"distill": True})
    print_progress(SweepProgress(2, 5, 1, 0, 1, 0.12, "abc", "COMPLETED", done, objectives=("accuracy", "size_mb", "latency_ms")))
    stopped = TrialOutcome("STOPPED", {"val_accuracy": 0.15}, stopped_at_step=100,
                           stop_reason="dominated: accuracy <= 0.2000 at 0.05 MB, 1 ms")
    print_progress(SweepProgress(3, 5, 1, 0, 1, 0.12, "def", "STOPPED", stopped, stopped=1))
    print_progress(SweepProgress(4, 5, 0, 1, 1, 0.12, "ghi", "ERROR", None, stopped=1))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("[2/5] trial abc: accuracy 0.3  size_mb 0.02 MB  latency_ms 0.5 ms  (student reused: cache hit)")
    assert "stopped early at step 100 (dominated: accuracy <= 0.2000" in lines[1] and "stopped early 1" in lines[1]
    assert "FAILED" in lines[2] and "failed 1, stopped early 1" in lines[2]


def test_an_outcome_travels_through_a_tune_result_as_itself():
    from orchestrator.outcome import TrialOutcome

    outcome = TrialOutcome("COMPLETED", {"accuracy": 0.4, "size_mb": 0.1, "latency_ms": 1.5, "test_accuracy": 0.38},
                           cache_hits={"teacher": True, "distill": False}, timings={"time_distill_s": 3.0}, artifact="a.orc")
    result = {**outcome.report(["accuracy", "size_mb", "latency_ms"]), "done": True, "training_iteration": 1}  # Tune adds its own keys
    assert {k: result[k] for k in ("accuracy", "size_mb", "latency_ms")} == {"accuracy": 0.4, "size_mb": 0.1, "latency_ms": 1.5}  # what Optuna reads
    assert "test_accuracy" not in result and outcome.report(["size_mb", "accuracy"]).keys() == {"size_mb", "accuracy", "outcome"}
    assert TrialOutcome.from_result(result) == outcome and TrialOutcome.from_result({"done": True}) is None
    assert outcome.row()["cache_hit_teacher"] == 1.0 and outcome.row()["cache_hit_distill"] == 0.0
