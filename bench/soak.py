"""A soak: 1,000 of the cheapest trials (`bench/soak.yaml`: the teacher itself pruned and quantized, no distillation), 4 at once,
against a real `mlflow server`, with the server restarted at a third of the way and the driver SIGKILLed at two
thirds (then `--resume`). Counted at the end in every store: the trials in Tune's results, the Optuna study,
MLflow and trials.jsonl, none twice, nothing left RUNNING; the driver's resident memory sampled every second
(its slope after warm-up, MB per 100 trials, by least squares over the first run's samples past 150 trials); and
the trials per minute.

    python bench/soak.py [--trials 1000] [--out bench/results/soak.json]

Not a test: its timings move with load.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: the tests' process harness and servers
from tests import harness  # noqa: E402
from tests.servers import MlflowServer  # noqa: E402

SPACE = ROOT / "bench" / "soak.yaml"
EXPERIMENT = "soak"
DONE = re.compile(r"^\[(\d+)/\d+\] ", re.M)


def _args(trials: int) -> list[str]:
    return ["--trials", str(trials), "--set", f"experiment={EXPERIMENT}"]


def _done(log: Path) -> int:
    found = DONE.findall(log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


def _sample(proc, log: Path, samples: list[tuple[float, int, float]], stop: threading.Event) -> None:
    """(seconds, trials ended, driver RSS in MB) every second while `proc` runs."""
    t0 = time.monotonic()
    try:
        p = psutil.Process(proc.pid)
        while not stop.is_set() and proc.poll() is None:
            samples.append((time.monotonic() - t0, _done(log), p.memory_info().rss / 1e6))
            time.sleep(1.0)
    except psutil.NoSuchProcess:
        pass


def run(trials: int, out: Path) -> dict:
    root = Path(tempfile.mkdtemp(prefix="soak-"))
    (root / "server").mkdir()
    server = MlflowServer(root / "server").start()
    try:
        started = time.monotonic()
        proc, log = harness.start(root, "soak", SPACE, *_args(trials), tracking_uri=server.uri)
        samples: list[tuple[float, int, float]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_sample, args=(proc, log, samples, stop), daemon=True)
        sampler.start()
        restart_at, kill_at = trials // 3, 2 * trials // 3
        restarted = killed = None
        try:
            while proc.poll() is None:
                done = _done(log)
                if restarted is None and done >= restart_at:
                    server.stop()
                    time.sleep(5)
                    server.start()
                    restarted = done
                if done >= kill_at:
                    proc.send_signal(signal.SIGKILL)
                    killed = done
                    break
                time.sleep(0.5)
        finally:
            harness.finish(proc)
            stop.set()
        first_seconds = time.monotonic() - started
        sweep = harness.sweep_id(log)
        resumed_at = time.monotonic()
        proc, log2 = harness.start(root, "soak-resumed", SPACE, *_args(trials), "--resume", sweep, tracking_uri=server.uri)
        code = harness.finish(proc, 7200)
        resume_seconds = time.monotonic() - resumed_at
        st = harness.state(root, sweep, EXPERIMENT, tracking_uri=server.uri)
        rows = st["rows"]
        ids = [r["trial_id"] for r in rows]
        completed = [r for r in rows if r["status"] == "COMPLETED"]
        study = st["study"].trials
        children = st["children"]
        names = [c.info.run_name for c in children]
        warm = [(n, rss) for _, n, rss in samples if n >= 150]
        slope = float(np.polyfit([n for n, _ in warm], [r for _, r in warm], 1)[0] * 100) if len(warm) > 10 else float("nan")
        result = {
            "trials": trials, "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs", "exit_code_after_resume": code,
            "server_restarted_after": restarted, "driver_killed_after": killed,
            "trials_jsonl": len(rows), "trials_jsonl_unique": len(set(ids)), "completed": len(completed),
            "optuna_complete": sum(t.state.name == "COMPLETE" for t in study),
            "optuna_running": sum(t.state.name == "RUNNING" for t in study),
            "optuna_interrupted_requeued": sum(bool(t.user_attrs.get("rerun_of") is not None) for t in study),
            "mlflow_finished": sum(c.info.status == "FINISHED" for c in children),
            "mlflow_running": sum(c.info.status == "RUNNING" for c in [*st["parents"], *children]),
            "mlflow_runs_named_twice": len(names) - len(set(names)),
            "mlflow_parent_runs": len(st["parents"]),
            "tune_trials_with_outcome": len(st["tune_ids"]),
            "tune_outcomes_not_recorded": len(st["tune_ids"] - set(ids)),
            "first_run_seconds": round(first_seconds, 1), "resume_seconds": round(resume_seconds, 1),
            "trials_per_minute": round(len(rows) / ((first_seconds + resume_seconds) / 60), 1),
            "driver_rss_mb_at_150_trials": round(warm[0][1], 1) if warm else None,
            "driver_rss_mb_last": round(samples[-1][2], 1) if samples else None,
            "driver_rss_slope_mb_per_100_trials": round(slope, 2),
            "rss_samples": len(samples),
        }
    finally:
        server.stop()
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    run(args.trials, args.out)


if __name__ == "__main__":
    main()
