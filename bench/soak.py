"""A soak: 1,000 of the cheapest trials (`bench/soak.yaml`: the teacher itself pruned and quantized, no distillation), 4 at once,
against a real `mlflow server`, with the server restarted at a third of the way and the driver SIGKILLed at two
thirds (then `--resume`). Counted at the end in every store: the trials in Tune's results, the Optuna study,
MLflow and trials.jsonl, none twice, nothing left RUNNING; the driver's resident memory sampled every second
(its slope after warm-up, MB per 100 trials, by least squares over the first run's samples past 150 trials); and
the trials per minute.

    python bench/soak.py [--trials 1000] [--out bench/results/soak.json]
    python bench/soak.py --bare [--trials 1000] [--out bench/results/soak_bare.json]

`--bare` measures the floor the driver's memory stands on: a bare Ray Tune run in this process, a trainable
that only reports two numbers, 4 trials at once, with the settings a sweep gives Tune (no TensorBoard or CSV
loggers, the experiment state written at the start and the end), its RSS slope taken the same way; once as
Tune keeps its trials, once with each ended trial cut as the sweep's recorder cuts it (`Recorder.release`).

Not a test: its timings move with load.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import signal
import subprocess
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
        shutil.rmtree(root, ignore_errors=True)  # the sweep's storage and MLflow store: about 200 MB
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


def bare(trials: int, release: bool) -> dict:
    """The driver's RSS slope of a bare Tune run (see the module docstring)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    samples: list[tuple[int, float]] = []

    class Ended(tune.Callback):
        def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
            if release:  # as `Recorder.release`: Tune's statistics dropped, the last result cut to the id
                cut_tune_state(trial, {"trial_id"})
            samples.append((len(samples) + 1, psutil.Process().memory_info().rss / 1e6))

    def trainable(config: dict) -> None:
        tune.report({"accuracy": config["x"], "size_mb": 1.0})

    from orchestrator.core.environ import environ
    from orchestrator.engine.recorder import cut_tune_state
    from orchestrator.engine.run import TUNE_STATE_EVERY_S

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="soak-bare-") as root, \
            environ(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1", TUNE_GLOBAL_CHECKPOINT_S=str(TUNE_STATE_EVERY_S),
                    RAY_AIR_NEW_OUTPUT="0"):
        tune.Tuner(tune.with_resources(trainable, {"cpu": 0.01}), param_space={"x": tune.uniform(0, 1)},
                   tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=4, reuse_actors=True),
                   run_config=tune.RunConfig(storage_path=root, callbacks=[Ended(), JsonLoggerCallback()], verbose=0)).fit()
    warm = [(n, rss) for n, rss in samples if n >= 150]
    slope = float(np.polyfit([n for n, _ in warm], [r for _, r in warm], 1)[0] * 100)
    return {"trials": trials, "release": release, "seconds": round(time.monotonic() - started, 1),
            "driver_rss_mb_at_150_trials": round(warm[0][1], 1), "driver_rss_mb_last": round(samples[-1][1], 1),
            "driver_rss_slope_mb_per_100_trials": round(slope, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--bare", action="store_true", help="a bare Ray Tune run's memory slope instead (the floor)")
    parser.add_argument("--variant", choices=["plain", "release"], help=argparse.SUPPRESS)  # one bare run, this process
    args = parser.parse_args()
    if args.variant:
        import ray

        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            print("RESULT " + json.dumps(bare(args.trials, release=args.variant == "release")))
        finally:
            ray.shutdown()
        return
    if not args.bare:
        run(args.trials, args.out or ROOT / "bench" / "results" / "soak.json")
        return
    runs = []  # each in a process of its own: a run after another would reuse the memory the first one freed
    for variant in ("plain", "release"):
        done = subprocess.run([sys.executable, __file__, "--trials", str(args.trials), "--variant", variant],
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.split("RESULT ", 1)[1].splitlines()[0]))
    result = {"machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs", "runs": runs}
    out = args.out or ROOT / "bench" / "results" / "soak_bare.json"
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
