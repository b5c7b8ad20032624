"""The node's measurement gate (`io.gate`) between real processes: no worker's step runs inside a measurement
window, a dead service's request and a dead worker's hold do not stop the node."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from orchestrator.io.gate import REQUEST, Gate

WORKER = textwrap.dedent("""
    import json, sys, time
    from orchestrator.io.gate import Gate
    path, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    spans = []
    with Gate(path).worker() as w:
        print("ready", flush=True)
        for _ in range(steps):
            w.between_steps()
            t0 = time.time()
            end = time.perf_counter() + 0.004
            while time.perf_counter() < end:  # a step: busy, like training
                pass
            spans.append((t0, time.time()))
    json.dump({"spans": spans, "paused_s": w.paused_s}, open(out, "w"))
""")


def _workers(tmp_path, n, steps):
    procs = []
    for i in range(n):
        p = subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path / "gate"), str(tmp_path / f"w{i}.json"), str(steps)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
        assert p.stdout.readline().strip() == "ready"
        procs.append(p)
    return procs


def test_no_step_of_any_worker_falls_inside_a_measurement_window(tmp_path):
    gate = Gate(tmp_path / "gate")
    procs = _workers(tmp_path, 2, 400)
    windows = []
    while any(p.poll() is None for p in procs):
        with gate.measuring() as window:
            started = time.time()
            time.sleep(0.03)  # timing a model
            windows.append((started, time.time()))
            assert window.isolated
        time.sleep(0.02)
    assert all(p.wait() == 0 for p in procs)
    runs = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    spans = [s for r in runs for s in r["spans"]]
    assert len(spans) == 800 and len(windows) >= 5
    inside = [(s, w) for s in spans for w in windows if s[0] < w[1] and w[0] < s[1]]
    assert inside == []
    assert all(r["paused_s"] > 0 for r in runs)  # they did pause (a gate that never shut would fail above)


def test_a_window_opens_with_no_worker_and_the_request_is_gone_after(tmp_path):
    gate = Gate(tmp_path / "gate")
    with gate.measuring() as window:
        assert gate.requested()
    assert window.isolated and window.waited_s < 0.5
    assert not gate.requested()


def test_a_dead_services_request_does_not_stop_the_workers(tmp_path):
    gate = Gate(tmp_path / "gate")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gate.room  # creates the directory
    (gate.path / f"{REQUEST}{dead.pid}-0").touch()
    with gate.worker() as w:
        t = time.perf_counter()
        assert w.between_steps() == 0.0
        assert time.perf_counter() - t < 0.5
    assert not list(gate.path.glob(f"{REQUEST}*"))  # removed by the worker that found it


def test_a_killed_workers_hold_ends_with_it_and_a_stuck_one_is_waited_for_no_longer_than_the_deadline(tmp_path):
    gate = Gate(tmp_path / "gate")
    stuck = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from orchestrator.io.gate import Gate
        with Gate({str(tmp_path / 'gate')!r}).worker():
            print("ready", flush=True)
            time.sleep(60)  # never reaches a step boundary
    """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert stuck.stdout.readline().strip() == "ready"
    with gate.measuring(deadline_s=0.3) as window:
        pass
    assert not window.isolated and 0.3 <= window.waited_s < 2
    stuck.send_signal(signal.SIGKILL)
    stuck.wait()
    with gate.measuring(deadline_s=5) as window:
        pass
    assert window.isolated and window.waited_s < 0.5
