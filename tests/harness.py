"""`orchestrator sweep` as a real process a test or a benchmark stops (SIGINT, SIGTERM, SIGKILL) and resumes,
and what every store then holds of the sweep: Tune's files, the Optuna study, MLflow, trials.jsonl."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from orchestrator.io.records import TrialRecord, from_json


def tracking(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def start(root: Path, name: str, space: Path, *args: str, tracking_uri: str | None = None,
          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, Path]:
    """`orchestrator sweep SPACE` with storage `root/runs` and MLflow `tracking_uri` (default `root/mlflow.db`),
    in its own process group (its Ray too), its output in `root/NAME.log`; `env`: variables set for it."""
    log = root / f"{name}.log"
    cmd = [sys.executable, "-m", "orchestrator", "sweep", str(space), "--storage", str(root / "runs"),
           "--tracking-uri", tracking_uri or tracking(root), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **(env or {})})
    return proc, log


def wait_for_text(proc: subprocess.Popen, log: Path, text: str, seconds: float = 240) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never came: {log.read_text()[-3000:]}")
        time.sleep(0.2)


def wait_for_trial(root: Path, proc: subprocess.Popen, experiment: str, number: int, seconds: float = 120) -> None:
    """Until trial `number` has started (its MLflow run is RUNNING): a signal now lands mid-trial."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking(root))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and proc.poll() is None:
        found = client.get_experiment_by_name(experiment)
        if found and client.search_runs([found.experiment_id], f"attributes.run_name = 'trial-{number:04d}' and "
                                        "attributes.status = 'RUNNING'"):
            return
        time.sleep(0.1)
    raise AssertionError(f"trial {number} never started")


def finish(proc: subprocess.Popen, seconds: float = 300) -> int:
    """Its exit code; whatever of its group is left (a killed driver's Ray agents) is then killed."""
    try:
        return proc.wait(timeout=seconds)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def sweep_id(log: Path) -> str:
    """From the sweep's own line: `sweep <sweep id>: its files in ...`."""
    line = next(line for line in log.read_text().splitlines() if line.startswith("sweep ") and ": its files in " in line)
    return line.split()[1].rstrip(":")


def sweep_id_from_storage(root: Path) -> str:
    """The one sweep in storage `root/runs` (its id before it prints it: its config is its first file)."""
    (found,) = [p.name for p in (root / "runs" / "sweeps").iterdir()]
    return found


def state(root: Path, sweep: str, experiment: str, tracking_uri: str | None = None) -> dict[str, Any]:
    """What every store holds of sweep `sweep`: its MLflow parent runs and child runs, its Optuna study, its
    trials.jsonl rows, and Tune's trials that reported a result."""
    import optuna
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri or tracking(root))
    found = client.get_experiment_by_name(experiment)
    parents = client.search_runs([found.experiment_id], f"tags.sweep_id = '{sweep}' and tags.`orchestrator.role` = 'sweep'") \
        if found else []
    children = [run for p in parents for run in client.search_runs(
        [found.experiment_id], f"tags.`mlflow.parentRunId` = '{p.info.run_id}'", order_by=["attributes.start_time ASC"],
        max_results=5000)]
    files = root / "runs" / "sweeps" / sweep
    study = optuna.load_study(study_name=sweep, storage=f"sqlite:///{files / 'optuna.db'}")
    lines = (files / "trials.jsonl").read_text().splitlines() if (files / "trials.jsonl").exists() else []
    rows = [from_json(TrialRecord, line).row() for line in lines]  # read back as the product reads them
    tune = [p for p in (root / "runs" / "tune").glob(f"{sweep}*/*/result.json") if '"outcome"' in p.read_text()]
    tune_ids = {json.loads(line)["trial_id"] for p in tune for line in p.read_text().splitlines() if '"outcome"' in line}
    return {"parents": parents, "children": children, "study": study, "rows": rows,
            "files": files, "client": client, "tune_trials": tune, "tune_ids": tune_ids}


def counts(st: dict[str, Any], params: Sequence[str]) -> dict[str, int]:
    """Completed trials found in Tune, Optuna and MLflow, and configurations completed more than once."""
    done = [r for r in st["rows"] if r["status"] == "COMPLETED"]
    configs = [tuple(round(float(r[p]), 9) if isinstance(r[p], (int, float)) else r[p] for p in params) for r in done]
    return {
        "tune": len(st["tune_trials"]),
        "optuna": sum(t.state.name == "COMPLETE" for t in st["study"].trials),
        "mlflow": sum(c.info.status == "FINISHED" for c in st["children"]),
        "recorded": len(done),
        "duplicates": len(configs) - len(set(configs)),
        "optuna_running": sum(t.state.name == "RUNNING" for t in st["study"].trials),
        "mlflow_running": sum(c.info.status == "RUNNING" for c in [*st["parents"], *st["children"]]),
    }


def train_workers() -> list[int]:
    """PIDs of the Ray Train workers running on this machine (their process title names them)."""
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if b"RayTrainWorker" in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            continue
    return pids
