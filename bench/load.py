"""A sweep of 200 of the cheapest trials there are (bench/load.yaml: prune and quantize the teacher itself,
export, measure): are all 200 in Tune, Optuna and MLflow, none lost or duplicated, and what does the sweep's
bookkeeping cost per trial?

    python bench/load.py [--trials 200] [--out bench/results/load.json]

Figures, each from the sweep itself: trials per minute over the trial phase (`trials_seconds`), the tracking
cost per trial (`tracking_ms_per_trial`: every MLflow call a trial causes, timed by the product), the
orchestration overhead, and the counts in each store (Tune's trials with a result, Optuna's COMPLETE trials,
MLflow's FINISHED trial runs, trials.jsonl's rows) with the configurations that appear twice. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
from tests import harness  # noqa: E402  (what every store holds of a sweep, as the fault tests read it)

import orchestrator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default=str(ROOT / "bench" / "load.yaml"))
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "load.json"))
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        started = time.perf_counter()
        result = orchestrator.Sweep.from_yaml(args.space, trials=args.trials, storage=str(root / "runs"),
                                              tracking_uri=harness.tracking(root)).run()
        wall = time.perf_counter() - started
        st = harness.state(root, result.sweep_id, result.config.experiment or result.config.name)
        counts = harness.counts(st, ["sparsity", "bits"])
        parent = st["client"].get_run(result.run_id).data.metrics
    figures = {
        "trials": args.trials, **counts,
        "trials_per_minute": round(60 * args.trials / parent["trials_seconds"], 1),
        "tracking_ms_per_trial": round(parent["tracking_ms_per_trial"], 1),
        "orchestration_overhead": round(parent["orchestration_overhead"], 3),
        "trials_seconds": round(parent["trials_seconds"], 1), "wall_seconds": round(wall, 1),
        "lost": args.trials - counts["recorded"], "repeats_skipped": int(parent.get("repeats_skipped", 0)),
        "machine": f"{platform.node()} ({os.cpu_count()} CPUs)",
    }
    print(json.dumps(figures, indent=1))
    Path(args.out).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
