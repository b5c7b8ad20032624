"""Repeatability of the measured objectives: the same 8-trial sweep run twice, two trials at a time.

    python bench/repeatability.py [--space search_spaces/quickstart.yaml] [--trials 8] [--out bench/results/repeatability.json]

The same seed samples the same configurations in both runs, and each run trains its own students (the
teacher, its measurements and its outputs are built once and shared, so both runs do the same trial
work). For each objective it reports the median and the worst relative difference between the two runs
for the same configuration, |a - b| / mean(a, b), and the share of configurations whose front
membership changed. Prints the figures and writes them as JSON. Not a test: the machine's load moves them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import orchestrator

SHARED = ("data", "teachers", "teacher_measurements", "teacher_outputs")  # built once, used by both runs


def _key(row: dict, names: list[str]) -> tuple:
    return tuple(round(row[n], 9) if isinstance(row[n], float) else row[n] for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/quickstart.yaml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--out", default="bench/results/repeatability.json")
    parser.add_argument("--local-cpus", type=int, default=None,
                        help="logical CPUs of the local Ray (two 1-CPU trials and the measurement service need 3)")
    args = parser.parse_args()
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(2):
            storage = Path(tmp) / f"run{i}"
            if i:  # the second run starts from the first one's teacher, not its students
                for name in SHARED:
                    shutil.copytree(Path(tmp) / "run0" / name, storage / name)
            result = orchestrator.Sweep.from_yaml(
                args.space, trials=args.trials, max_concurrent_trials=2, storage=str(storage),
                tracking_uri=f"sqlite:///{tmp}/mlflow.db", **{"resources.local_cpus": args.local_cpus},
            ).run()
            runs.append(result)
            print(f"run {i + 1}: {len(result.trials)} trials, front {int(result.trials['pareto'].sum())}, "
                  f"wall {result.wall_seconds:.0f} s", flush=True)

    params = [name for name in runs[0].config.params]
    a, b = ({_key(r, params): r for r in run.trials.to_dict(orient="records")} for run in runs)
    common = sorted(set(a) & set(b), key=str)
    figures: dict = {
        "space": args.space, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d"),
        "trials": args.trials, "local_cpus": args.local_cpus, "same_configurations": len(common), "wall_s": round(time.perf_counter() - started, 1),
        "objectives": {},
    }
    for name in [*runs[0].objectives, "latency_raw_ms", "latency_vs_teacher"]:
        diffs = [abs(a[k][name] - b[k][name]) / ((a[k][name] + b[k][name]) / 2) for k in common if a[k][name] + b[k][name]]
        figures["objectives"][name] = {"median_rel_diff": round(statistics.median(diffs), 4), "worst_rel_diff": round(max(diffs), 4)}
    changed = sum(bool(a[k]["pareto"]) != bool(b[k]["pareto"]) for k in common)
    figures["front_membership_changed"] = round(changed / len(common), 4)
    figures["front_sizes"] = [int(run.trials["pareto"].sum()) for run in runs]
    for k, v in figures.items():
        print(f"{k:>26}: {v}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
