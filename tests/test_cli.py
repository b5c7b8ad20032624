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
        ("", [], "space.yaml: the file holds no keys (it is empty or only comments)"),
        ("# only a comment\n", [], "the file holds no keys"),
        ("- trials\n- 2", [], "the top level must be a mapping of keys"),
        ("trials: 2\nseed: 1\ntrials: 3", [], "line 3: key `trials` is given twice in one mapping (first on line 1)"),
        ("distill: {steps: 2, steps: 3}", [], "key `steps` is given twice"),
        ("pipline: [distill]", [], "`pipline` is not a known key (did you mean `pipeline`?); known keys at the top level: name,"),
        ("distill: {stpes: 3}", [], "`distill.stpes` is not a known key (did you mean `steps`?)"),
        ("params: {bitz: 4}", [], "`params.bitz` is not a searchable parameter (did you mean `bits`?)"),
        ("pipeline: [distil]", [], "names stage 'distil' (did you mean `distill`?)"),
        ("trials: 2", ["--set", "pipelin=[distill]"], "--set pipelin: `pipelin` is not a known key (did you mean `pipeline`?)"),
        # a value echoed in an error is cut short, however large: this one would print millions of characters
        ("a: &a [xxxxxxxxxxxxxxxx, xxxxxxxxxxxxxxx, xxxxxxxxxxxxxxxx, xxxxxxxxxxxxxxxx]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d]\n"
         "trials: [*e, *e, *e, *e, *e, *e, *e, *e]", [], "`a` is not a known key"),
        ("params: {bits: {choices: &c [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [*c, *c, *c, *c, *c, *c, *c]]}}", [],
         "`params.bits.choices` must be an integer, got [1, 2, 3, 4, 5, 6, ...]"),
        # the flags' own values: errors name the flag, and what was tried
        ("trials: 2", ["--trials", "0"], "orchestrator: error: --trials: `trials` must be an integer >= 1, got 0"),
        ("trials: 2", ["--set", "trials=0"], "orchestrator: error: --set trials: `trials` must be an integer >= 1, got 0"),
        ("trials: 2", ["--register", "team/model"], "orchestrator: error: --register: `register` must be null or a name without"),
        ("trials: 2", ["--max-failures", "0"], "--max-failures: `max_failures` must be null or an integer >= 1, got 0"),
        ("trials: 2", ["--storage", "/proc/no/such/dir"], "--storage '/proc/no/such/dir': cannot write there"),
        ("trials: 2", ["--tracking-uri", "http://127.0.0.1:9"],
         "--tracking-uri 'http://127.0.0.1:9': no MLflow server answered there (tried GET http://127.0.0.1:9/health"),
        ("trials: 2", ["--tracking-uri", "sqlite:////no/such/dir/mlflow.db"], "the directory of the SQLite file, /no/such/dir, does not exist"),
        ("trials: 2", ["--address", "127.0.0.1:9"], "--address '127.0.0.1:9': the Ray cluster did not answer (tried a TCP connection to 127.0.0.1:9"),
        ("trials: 2", ["--address", "ray:/x"], "--address 'ray:/x': not a Ray address; give auto, HOST:6379 or ray://HOST:10001"),
        ("task: {files: 'corpus/*.txt'}", [], "space.yaml: `task.files` 'corpus/*.txt' matches no file; give a path or glob"),
        ("tracking_uri: http://127.0.0.1:9", [], "space.yaml: `tracking_uri` 'http://127.0.0.1:9': no MLflow server answered there"),
        # argparse's own errors: one line too
        ("trials: 2", ["--trials", "x"], "orchestrator sweep: error: argument --trials: invalid int value: 'x' (see orchestrator sweep --help)"),
        ("trials: 2", ["--bogus"], "orchestrator: error: unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys, yaml_text, args, expect):
    space = tmp_path / "space.yaml"
    space.write_text(yaml_text)
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)  # where a default storage or mlflow.db would land
    code = _main(["sweep", str(space), *args])
    out, err = capsys.readouterr()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("orchestrator"), err
    assert expect in lines[0]
    assert len(lines[0]) <= 1100
    assert "Traceback" not in err and out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no storage


def test_too_little_text_is_one_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    """Not torch's `random_` error from inside the teacher: the length each split needs, named."""
    from orchestrator.tasks.lm import fewest_tokens

    (tmp_path / "a.txt").write_text("x" * (fewest_tokens(32) - 1))
    space = tmp_path / "space.yaml"
    space.write_text("task: {files: '*.txt', context: 32}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    monkeypatch.chdir(tmp_path)
    assert _main(["sweep", str(space)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"orchestrator: error: {space}: `task.files` '*.txt' gives {fewest_tokens(32) - 1} characters; the "
                          f"90/5/5 splits need at least {fewest_tokens(32)} for one window of `task.context` = 32 in each")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    (tmp_path / "a.txt").write_text("x" * fewest_tokens(32))  # one more character is enough: every split holds a window
    from orchestrator import load_config
    from orchestrator.tasks.char_lm import build_data

    assert load_config(space).task.files == "*.txt"
    data = build_data("x" * fewest_tokens(32))
    assert min(len(data.train), len(data.val), len(data.test)) >= 34


def _main(argv):
    """`cli.main(argv)`'s exit code, argparse's exits included."""
    from orchestrator import cli

    try:
        return cli.main(argv)
    except SystemExit as e:
        return e.code


def test_missing_file(tmp_path):
    proc = _run(tmp_path, "nope.yaml")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "orchestrator: error: nope.yaml: no such file; pass the path of a search-space YAML (see search_spaces/)"
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_say_what_each_trial_did(capsys):
    from orchestrator import SweepProgress, TrialOutcome
    from orchestrator.cli import print_progress

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
