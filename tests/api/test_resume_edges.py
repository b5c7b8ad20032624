"""A sweep stopped before its first trial, and a sweep whose own Ray dies under it, with real processes and signals:
each is resumed by its id and finishes; after `RayDied` the same process runs another sweep."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests import harness

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
STEPS = ["--set", "distill.steps=1000"]  # trials of ~3 s

pytestmark = pytest.mark.slow


def test_a_sweep_killed_while_its_teacher_trains_is_resumed_by_its_id(tmp_path):
    """SIGKILL before the first trial (the teacher half trained, no study, no MLflow run yet): `--resume` builds the
    teacher (nothing half-written is read), makes the study and the sweep's one run, and runs every trial."""
    slow_teacher = ["--trials", "2", "--set", "teacher.steps=1500", "--set", "experiment=faults-teacher"]
    proc, log = harness.start(tmp_path, "killed", SMOKE, *slow_teacher)
    try:
        harness.wait_for_text(proc, log, "1500 training steps")
        sweep = harness.sweep_id_from_storage(tmp_path)
        proc.send_signal(signal.SIGKILL)
    finally:
        assert harness.finish(proc) == -signal.SIGKILL
    proc, log = harness.start(tmp_path, "resumed", SMOKE, *slow_teacher, "--resume", sweep)
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    assert f"sweep {sweep} stopped before its first trial; its trials start now" in log.read_text()
    state = harness.state(tmp_path, sweep, "faults-teacher")
    assert [p.info.status for p in state["parents"]] == ["FINISHED"]
    assert [(c.info.run_name, c.info.status) for c in state["children"]] == [("trial-0001", "FINISHED"), ("trial-0002", "FINISHED")]
    assert [t.state.name for t in state["study"].trials] == ["COMPLETE", "COMPLETE"] and len(state["rows"]) == 2


def _raylets(session: int) -> list[int]:
    """The raylets of the Ray that the process group `session` started (a sweep's own Ray)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if os.getsid(int(stat.parent.name)) == session and b"/raylet" in stat.read_bytes()[:300]:
                found.append(int(stat.parent.name))
        except (OSError, ProcessLookupError):
            continue
    return found


def test_a_sweep_whose_ray_dies_says_so_in_one_line_and_is_resumed(tmp_path):
    """The sweep's raylet SIGKILLed from outside after its first trial: one line naming it and the resume command,
    exit 1, the trials that ended recorded; `--resume` finishes the sweep."""
    proc, log = harness.start(tmp_path, "ray-died", SMOKE, "--trials", "3", *STEPS, "--set", "experiment=ray-died")
    try:
        harness.wait_for_text(proc, log, "[1/3]")
        raylets = _raylets(proc.pid)
        assert len(raylets) == 1
        os.kill(raylets[0], signal.SIGKILL)
    finally:
        code = harness.finish(proc, 120)
    text = log.read_text()
    assert code == 1, text[-3000:]
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"orchestrator: error: the sweep's Ray stopped under it: its raylet (pid {raylets[0]}) ended with "
                           "code -9; ") and " of its 3 trials ended and are recorded. Finish it with: orchestrator sweep " in last
    assert "Traceback" not in text
    sweep = harness.sweep_id(log)
    ended = len(harness.state(tmp_path, sweep, "ray-died")["rows"])
    assert ended >= 1
    proc, log = harness.start(tmp_path, "ray-resumed", SMOKE, "--trials", "3", *STEPS, "--set", "experiment=ray-died", "--resume", sweep)
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    state = harness.state(tmp_path, sweep, "ray-died")
    assert len(state["rows"]) == 3 and {r["status"] for r in state["rows"]} == {"COMPLETED"}
    assert [p.info.status for p in state["parents"]] == ["FINISHED"]


_TWO_SWEEPS = """
import os, signal, sys
import ray
from ray._private import ray_constants
from orchestrator import RayDied, Sweep

def kill_raylet(p):
    if p.done == 1:
        node = ray._private.worker.global_worker.node
        os.kill(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid, signal.SIGKILL)

root = sys.argv[1]
space = dict(storage=f"{root}/runs", tracking_uri=f"sqlite:///{root}/mlflow.db", experiment="two")
try:
    Sweep.from_yaml(sys.argv[2], trials=3, **space).run(progress=kill_raylet)
    print("no error")
except RayDied as e:
    print("raised", e.sweep_id)
result = Sweep.from_yaml(sys.argv[2], trials=2, sampler_seed=5, **space).run()
print("second", len(result.trials), sorted(result.trials["status"]))
"""


def test_after_its_ray_died_the_same_process_runs_another_sweep(tmp_path):
    """`Sweep.run` raises `RayDied` (typed, with the sweep's id), and the same Python process then runs a new sweep
    on a new Ray of its own."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _TWO_SWEEPS, str(tmp_path), str(SMOKE)], capture_output=True, text=True,
                         timeout=400, cwd=tmp_path, start_new_session=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith(("raised", "no error", "second"))]
    assert lines[0].startswith("raised smoke-"), out.stdout[-2000:] + out.stderr[-3000:]
    assert lines[1] == "second 2 ['COMPLETED', 'COMPLETED']", out.stdout[-2000:] + out.stderr[-3000:]


def test_a_storage_that_fills_mid_sweep_stops_it_in_one_line_and_resume_finishes_it(tmp_path):
    """The storage on a small tmpfs, filled to the last byte after the first trial: one line naming the storage and
    the cause, exit 1, nothing half-written read; once space is freed `--resume` finishes the sweep, each trial
    recorded once."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400m", "tmpfs", str(disk)], check=True)
    try:
        args = ["--trials", "3", *STEPS, "--set", "experiment=full", "--storage", str(disk / "runs")]
        proc, log = harness.start(tmp_path, "full", SMOKE, *args)
        filler = disk / "filler"
        try:
            harness.wait_for_text(proc, log, "[1/3]")
            with open(filler, "wb", buffering=0) as f:  # every byte left (the sweep writes meanwhile: until none is)
                for size in (1 << 20, 1 << 12):
                    block = bytes(size)
                    try:
                        while True:
                            f.write(block)
                    except OSError:
                        pass
        finally:
            code = harness.finish(proc, 240)
        text = log.read_text()
        last = text.strip().splitlines()[-1]
        assert code == 1, text[-3000:]
        assert last.startswith(f"orchestrator: error: storage {disk / 'runs'} is full (") and "No space left on device" in last \
            and "free space there, then finish the sweep with --resume" in last and " Finish it with: orchestrator sweep " in last, last
        assert "Traceback" not in text
        sweep = harness.sweep_id(log)
        filler.unlink()
        proc, log = harness.start(tmp_path, "full-resumed", SMOKE, *args, "--resume", sweep)
        assert harness.finish(proc) == 0, log.read_text()[-3000:]
        lines = (disk / "runs" / "sweeps" / sweep / "trials.jsonl").read_text().splitlines()
        ids = [json.loads(line)["trial_id"] for line in lines]
        assert len(ids) == 3 and len(set(ids)) == 3  # each once, none half-written
        assert {json.loads(line)["status"] for line in lines} == {"COMPLETED"}
        assert not list((disk / "runs").rglob("*.tmp"))  # no half-built entry left, none read
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
