"""Wall time and orchestration overhead of the demo sweep, from an empty storage (the teacher included).

    python bench/quickstart.py [--space search_spaces/quickstart.yaml] [--out bench/results/quickstart.json]

Prints the figures and writes them as JSON. Not a test: the machine's load moves these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import orchestrator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/quickstart.yaml")
    parser.add_argument("--out", default="bench/results/quickstart.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = orchestrator.Sweep.from_yaml(
            args.space, storage=f"{tmp}/runs", tracking_uri=f"sqlite:///{tmp}/mlflow.db"
        ).run()
        wall = time.perf_counter() - started
        from mlflow.tracking import MlflowClient

        phases = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics

    t = result.trials
    done = t[t["status"] == "COMPLETED"]
    startup = (done["time_distill_fit_s"] - done["time_distill_s"]).mean()
    stage_total = result.teacher.seconds_now + done["time_stages_s"].sum()
    figures = {
        "space": args.space,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": time.strftime("%Y-%m-%d"),
        "trials": len(t),
        "completed": len(done),
        "max_concurrent_trials": result.config.max_concurrent_trials,
        "wall_s": round(wall, 1),
        "setup_s": round(phases["setup_seconds"], 1),
        "teacher_phase_s": round(phases["teacher_seconds"], 1),
        "trials_phase_s": round(phases["trials_seconds"], 1),
        "teacher_train_s": round(result.teacher.train_seconds, 1),
        "stage_s_total": round(stage_total, 1),
        "mean_trial_stage_s": round(done["time_stages_s"].mean(), 1),
        "mean_distill_train_s": round(done["time_distill_s"].mean(), 1),
        "mean_worker_startup_s": round(startup, 1),
        "orchestration_overhead": round(result.overhead, 3),
        "tail_idle_slot_s": round(phases["tail_idle_seconds"], 1),
        "teacher_accuracy": round(result.teacher.accuracy, 4),
        "teacher_size_mb": round(result.teacher.size_bytes / 1e6, 3),
        "front_size": int(t["pareto"].sum()),
        "front": result.pareto[["trial_id", "accuracy", "size_mb", "latency_ms", "compression_ratio", "accuracy_retained",
                                "layers", "width", "sparsity", "bits"]].round(4).to_dict(orient="records"),
    }
    for k, v in figures.items():
        if k != "front":
            print(f"{k:>24}: {v}")
    for row in figures["front"]:
        print("  front:", row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
