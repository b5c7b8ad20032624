"""A sweep stopped before its first trial, and a sweep whose own Ray dies under it, with real processes and signals:
each is resumed by its id and finishes; after `RayDied` the same process runs another sweep."""

from __future__ import annotations

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
