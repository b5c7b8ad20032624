"""`orchestrator ui`: the MLflow UI for the store a sweep used, on 127.0.0.1, and the pages to open.

For a SQLite store (the default) it starts `mlflow server` on that file with one worker (it also serves
the runs' artifacts, which live next to the file); for a tracking server that already runs it starts
nothing and prints that server's pages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient


def last_sweep(client: MlflowClient) -> Any | None:
    """The sweep run started last in the store (None when it holds none)."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return None
    runs = client.search_runs(experiments, "tags.`orchestrator.role` = 'sweep'", order_by=["attributes.start_time DESC"],
                              max_results=1)
    return runs[0] if runs else None


def pages(base: str, run: Any) -> dict[str, str]:
    """The UI's pages for a sweep's parent run: the runs table of its trials (the view the sweep saved), and
    the run's pareto.html."""
    experiment, run_id = run.info.experiment_id, run.info.run_id
    return {"runs": f"{base}/#/experiments/{experiment}/runs?viewStateShareKey={run_id}",  # the sweep's own view
            "pareto": f"{base}/#/experiments/{experiment}/runs/{run_id}/artifacts/pareto.html"}


def start_server(tracking_uri: str, port: int, host: str = "127.0.0.1", log_file: str | os.PathLike[str] | None = None) -> subprocess.Popen:
    """`mlflow server` on `tracking_uri`, one worker, no job runner; returns once it answers /health."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    out = open(log_file, "w") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port),
         "--workers", "1"],
        env=env, stdout=out, stderr=out, start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode} (port {port} in use? see "
                               f"{log_file or 'its output'})")
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2):
                return proc
        except OSError:
            time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"mlflow server on port {port} did not answer within 90 s")


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and the workers it started (its process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_ui(tracking_uri: str, port: int, *, host: str = "127.0.0.1") -> int:
    """Serve the UI until Ctrl-C (a SQLite or file store), or print a running server's pages."""
    client = MlflowClient(tracking_uri)
    remote = tracking_uri.startswith(("http://", "https://"))
    if not remote and tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        print(f"orchestrator: error: --tracking-uri {tracking_uri}: no such SQLite file; run a sweep first, or give the "
              "store a sweep used", file=sys.stderr)
        return 2
    base = tracking_uri.rstrip("/") if remote else f"http://{host}:{port}"
    proc = None if remote else start_server(tracking_uri, port, host)
    try:
        run = last_sweep(client)
        print(f"MLflow UI for {tracking_uri}: {base}")
        if run is None:
            print("no sweep in this store yet")
        else:
            links = pages(base, run)
            print(f"last sweep {run.data.tags.get('sweep_id', run.info.run_name)}:\n  runs:   {links['runs']}\n"
                  f"  front:  {links['pareto']}")
        if proc is None:
            return 0
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the server too: set before the line that says it is up
        print("Ctrl-C stops the UI", flush=True)
        proc.wait()
        return proc.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None:
            stop_server(proc)


__all__ = ["last_sweep", "pages", "run_ui", "start_server", "stop_server"]
