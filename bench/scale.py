"""Trials per hour of the same sweep on one simulated node and on two (`ray.cluster_utils.Cluster`, one
CPU per worker node), with the storage in an S3 bucket on a local S3-protocol server (moto) and each node
keeping its own cache, as nodes without a shared disk do.

    python bench/scale.py [--space search_spaces/smoke.yaml] [--trials 8] [--steps 1000] [--out bench/results/scale.json]

The head node runs the sweep's driver and the measurement service (it offers `latency_target` and one CPU,
which the service holds); the worker nodes each offer one CPU, so one trial trains per worker node. Both
runs use the same seed (the same configurations, the same training work) and their own storage prefix; the
teacher phase is left out: trials per hour = completed trials / the seconds of the trial phase (from the
first trial's start to the last one's end, as the sweep logs it: `trials_seconds`). Prints the table and
writes it as JSON. Not a test: the machine's load moves the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import orchestrator
from orchestrator.core.environ import CACHE_ENV
from orchestrator.engine.cluster import RAY_ENV

sys.path.insert(0, str(Path(__file__).parents[1]))  # the repository root: its tests' server helpers
from tests.servers import start_s3, stop  # noqa: E402  (the same real S3 server the tests start)


def _run(nodes: int, args: argparse.Namespace, storage: str, tmp: Path) -> dict:
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    os.environ.update(RAY_ENV)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "resources": {"latency_target": 1}, "include_dashboard": False,
        "env_vars": {CACHE_ENV: str(tmp / f"n{nodes}-head")}})
    try:
        for i in range(nodes):
            cluster.add_node(num_cpus=1, env_vars={CACHE_ENV: str(tmp / f"n{nodes}-node{i}")})
        cluster.wait_for_nodes()
        os.environ[CACHE_ENV] = str(tmp / f"n{nodes}-head")  # the driver's own cache: the head's
        uri = f"sqlite:///{tmp / 'mlflow.db'}"
        result = orchestrator.Sweep.from_yaml(
            args.space, trials=args.trials, max_concurrent_trials=nodes, storage=storage, tracking_uri=uri,
            address=cluster.address, experiment=f"scale-{nodes}", **{"distill.steps": args.steps, "measure.target": "latency_target"},
        ).run()
    finally:
        cluster.shutdown()
    metrics = MlflowClient(uri).get_run(result.run_id).data.metrics
    done = int((result.trials["status"] == "COMPLETED").sum())
    return {
        "nodes": nodes, "trials_completed": done, "trials_seconds": metrics["trials_seconds"],
        "trials_per_hour": 3600 * done / metrics["trials_seconds"], "wall_seconds": result.wall_seconds,
        "orchestration_overhead": result.overhead,
        "distill_seconds_per_trial": float(result.trials["time_distill_s"].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="search_spaces/smoke.yaml")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1000, help="distillation steps per trial (the trials' work)")
    parser.add_argument("--out", default="bench/results/scale.json")
    args = parser.parse_args()
    server, s3 = start_s3("bench")
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for nodes in (1, 2):
                rows.append(_run(nodes, args, s3.format(f"scale-{nodes}"), Path(tmp)))
                print(f"{nodes} node(s): {rows[-1]['trials_completed']} trials in {rows[-1]['trials_seconds']:.1f} s of "
                      f"trial phase = {rows[-1]['trials_per_hour']:.0f} trials/hour", flush=True)
    finally:
        stop(server)
    ratio = rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"]
    print("\n| worker nodes | trials | trial phase (s) | trials/hour | distill s/trial | overhead |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['nodes']} | {r['trials_completed']} | {r['trials_seconds']:.1f} | {r['trials_per_hour']:.0f} | "
              f"{r['distill_seconds_per_trial']:.2f} | {r['orchestration_overhead']:.0%} |")
    print(f"two nodes / one node: {ratio:.2f}x trials per hour")
    out = {"runs": rows, "speedup": ratio, "space": args.space, "trials": args.trials, "distill_steps": args.steps,
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()}, "storage": "s3 (moto_server on 127.0.0.1)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
