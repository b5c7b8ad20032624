"""What MLflow tracking costs a sweep, per trial: the same sweep against the embedded SQLite store and
against a real `mlflow server` over HTTP (SQLite backend, artifacts served by the server, one worker,
started here on a free port of 127.0.0.1).

    python bench/tracking.py [--space search_spaces/smoke.yaml] [--trials 20] [--out bench/results/tracking.json]

The figures are the sweep's own (parent-run metrics the product measures by timing every MLflow call):
- `tracking_ms_per_trial`: the trials' records (each child run, its params, its metrics, curves and tags in
  one batch, its `model.orc`, its end; the parent's hypervolume after it; the front's tags and files),
  divided by the trials: the sweep run's own start, once per sweep, is left out;
- `tracking_seconds`: every MLflow call of the sweep, that start included;
- `front_models_seconds`: writing and logging the front points' MLflow models (and registering them);
- the parent run's `tracking.json`: every call's time by kind, printed here per trial.
Both sweeps use the same seed and storage (the teacher is trained once). Not a test: load moves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import orchestrator

sys.path.insert(0, str(Path(__file__).parents[1]))  # the repository root: its tests' server helpers
from tests.servers import free_port, stop, wait_for  # noqa: E402  (the same real server the tests start)


def _sweep(args: argparse.Namespace, uri: str, storage: Path, where: str) -> dict:
    from mlflow.tracking import MlflowClient

    result = orchestrator.Sweep.from_yaml(args.space, trials=args.trials, storage=str(storage), tracking_uri=uri,
                                          experiment=f"tracking-{where}", register=f"tracking-{where}").run()
    client = MlflowClient(uri)
    metrics = client.get_run(result.run_id).data.metrics
    with tempfile.TemporaryDirectory() as tmp:
        by_call = json.loads(Path(client.download_artifacts(result.run_id, "tracking.json", tmp)).read_text())["seconds_by_call"]
    return {"ms_per_trial_by_call": {k: round(1000 * v / len(result.trials), 1) for k, v in sorted(by_call.items(), key=lambda kv: -kv[1])},
            "store": where, "trials": len(result.trials), "front": int(result.trials["pareto"].sum()),
            "tracking_ms_per_trial": metrics["tracking_ms_per_trial"], "tracking_seconds": metrics["tracking_seconds"],
            "front_models_seconds": metrics["front_models_seconds"], "tracking_failures": metrics["tracking_failures"],
            "wall_seconds": result.wall_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="search_spaces/smoke.yaml")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", default="bench/results/tracking.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows.append(_sweep(args, f"sqlite:///{root / 'mlflow.db'}", root / "runs", "sqlite"))
        port = free_port()
        log = root / "server.log"
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
             "--serve-artifacts", "--artifacts-destination", str(root / "served"), "--host", "127.0.0.1",
             "--port", str(port), "--workers", "1"],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, stdout=subprocess.DEVNULL,
            stderr=open(log, "w"), start_new_session=True,
        )
        try:
            wait_for(f"http://127.0.0.1:{port}/health", proc, 90, log)
            rows.append(_sweep(args, f"http://127.0.0.1:{port}", root / "runs", "server"))
        finally:
            stop(proc)
    print(f"{'store':8} {'trials':>6} {'front':>5} {'ms/trial':>9} {'all calls s':>11} {'front models s':>14} {'wall s':>7}")
    for r in rows:
        print(f"{r['store']:8} {r['trials']:>6} {r['front']:>5} {r['tracking_ms_per_trial']:>9.1f} {r['tracking_seconds']:>11.2f} "
              f"{r['front_models_seconds']:>14.2f} {r['wall_seconds']:>7.0f}")
        print(f"         ms per trial by call (the sweep's start and the front models included): {r['ms_per_trial_by_call']}")
    out = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "space": args.space, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
