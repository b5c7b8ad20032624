"""An MLflow server away for longer than the sweep's retry window (`tracking_retry_s`), with real processes: the
records a sweep could not deliver wait in its journal and reach the server once, in order, when it answers:
after the driver was SIGKILLed during the outage (by `--resume`), and after a sweep that ended during it (by
`orchestrator sync`). Every run then holds what a run of a sweep that never saw an outage holds."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.tracking.journal import ENTRIES
from tests import harness
from tests.servers import MlflowServer

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
ARGS = ["--set", "experiment=outage", "--set", "tracking_retry_s=1", "--set", "distill.steps=1000"]  # ~3 s trials: a stop lands in one
SYSTEM = ("mlflow.runName", "mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.log-model.history",
          "orchestrator.run_key", "mlflow.source.git.commit", "mlflow.parentRunId", "sweep_id", "trial_id", "artifact",
          "model_uri", "resumed", "previous_trials", "stale_runs_closed", "trials_total")
MEASURED = ("recommended",)  # which trial is the knee moves with measured latency between two sweeps: counted, not named

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path):
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server").start()
    try:
        yield server
    finally:
        server.stop()


def _journal(root: Path, sweep: str) -> Path:
    return root / "runs" / "sweeps" / sweep / "journal" / ENTRIES


def _sweep_id(proc, log: Path) -> str:
    harness.wait_for_text(proc, log, ": its files in ")
    return harness.sweep_id(log)


def _shape(client, run) -> dict:
    """What a run holds that two sweeps of one config share: its name, status, params, each metric's steps, its
    tag names."""
    metrics = {k: sorted(m.step for m in client.get_metric_history(run.info.run_id, k)) for k in run.data.metrics}
    sweep_run = run.data.tags.get("orchestrator.role") == "sweep"
    return {"name": "sweep" if sweep_run else run.info.run_name, "status": run.info.status, "params": dict(run.data.params), "metrics": metrics,
            "tags": sorted(k for k in run.data.tags if k not in SYSTEM + MEASURED)}


def _runs(st: dict) -> list[dict]:
    client = st["client"]
    return [_shape(client, r) for r in [*st["parents"], *sorted(st["children"], key=lambda r: r.info.run_name)]]


def test_an_outage_past_the_retry_window_loses_nothing_through_a_killed_driver_and_a_sync(tmp_path, server):
    root = tmp_path
    # the same sweep with the server up throughout: what every run must hold
    proc, log = harness.start(root, "reference", SMOKE, "--trials", "2", *ARGS, tracking_uri=server.uri)
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    reference = harness.state(root, harness.sweep_id(log), "outage", tracking_uri=server.uri)

    # 1. the server stops after trial 1; the driver is SIGKILLed once records wait in the journal; --resume delivers them
    proc, log = harness.start(root, "killed", SMOKE, "--trials", "2", *ARGS, tracking_uri=server.uri)
    sweep = _sweep_id(proc, log)
    try:
        harness.wait_for_text(proc, log, "[1/2]")
        server.stop()
        deadline = time.monotonic() + 120
        while not (_journal(root, sweep).is_file() and "set_terminated" in _journal(root, sweep).read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
    finally:
        assert harness.finish(proc) == -signal.SIGKILL
    assert "go to the sweep's journal" in log.read_text()
    server.start()
    proc, log = harness.start(root, "resumed", SMOKE, "--trials", "2", *ARGS, "--resume", sweep, tracking_uri=server.uri)
    assert harness.finish(proc) == 0, log.read_text()[-3000:]
    assert "record(s) the sweep journaled while MLflow was away delivered" in log.read_text()
    st = harness.state(root, sweep, "outage", tracking_uri=server.uri)
    assert len(st["parents"]) == 1 and st["parents"][0].info.status == "FINISHED"
    names = [c.info.run_name for c in st["children"]]
    assert len(names) == len(set(names))  # no run twice
    finished = {c.data.tags["trial_id"] for c in st["children"] if c.info.status == "FINISHED"}
    assert finished == {r["trial_id"] for r in st["rows"]} and len(st["rows"]) == 2  # every recorded trial, delivered
    assert not [c for c in st["children"] if c.info.status == "RUNNING"]

    # 2. the server stops after trial 1 and stays away until the sweep has ended: `orchestrator sync` delivers the rest
    proc, log = harness.start(root, "ended", SMOKE, "--trials", "2", *ARGS, tracking_uri=server.uri)
    sweep = _sweep_id(proc, log)
    try:
        harness.wait_for_text(proc, log, "[1/2]")
        server.stop()
    finally:
        assert harness.finish(proc) == 0, log.read_text()[-3000:]
    assert f"wait in its journal (MLflow at {server.uri} is away); deliver them once it answers with: orchestrator sync " \
           f"{sweep}" in log.read_text()
    server.start()
    sync = [sys.executable, "-m", "orchestrator", "sync", sweep, "--storage", str(root / "runs"), "--tracking-uri", server.uri]
    out = subprocess.run(sync, cwd=root, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and " record(s) delivered to MLflow at " in out.stdout, out.stdout + out.stderr
    assert not out.stdout.startswith(f"sync {sweep}: 0 record(s)")
    again = subprocess.run(sync, cwd=root, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.startswith(f"sync {sweep}: 0 record(s) delivered"), again.stdout + again.stderr
    st = harness.state(root, sweep, "outage", tracking_uri=server.uri)
    for got, want in zip(_runs(st), _runs(reference), strict=True):  # every run as the sweep that never saw an outage made it
        assert {k: (got[k], want[k]) for k in want if got[k] != want[k]} == {}, got["name"]
    knees = [[c for c in s["children"] if c.data.tags.get("recommended") == "true"] for s in (st, reference)]
    assert len(knees[0]) == len(knees[1]) == 1, knees
    parent = st["parents"][0].data.metrics
    assert parent["tracking_journaled"] > 0 and parent["tracking_failures"] == 0
    files = {a.path for a in st["client"].list_artifacts(st["parents"][0].info.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png", "trials.csv", "tracking.json"} <= files
