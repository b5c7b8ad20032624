"""Faults a sweep meets, each run for real and counted in every store: stopped by Ctrl-C (SIGINT), SIGTERM
or SIGKILL of its driver mid-trial and finished by `--resume`; its MLflow server down for 30 s mid-sweep;
trials that fail, with `--max-failures`; a Ray Train worker SIGKILLed mid-distillation.

    python bench/faults.py [--out bench/results/faults.json] [--outage 30]

For each scenario: the trials expected to complete; the completed trials found in Tune (trials whose
result.json holds an outcome), in the Optuna study (COMPLETE) and in MLflow (FINISHED child runs); the
configurations completed twice (duplicates); what was left RUNNING in Optuna or MLflow; and the time to
recover (the `--resume` command's wall time, or how long after the server came back the sweep's next
trial ended). The table goes to bench/RESULTS.md by hand from the printed Markdown. Not a test: timings
move with load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))  # the repository root: the tests' process harness and servers
from tests import harness  # noqa: E402
from tests.servers import MlflowServer  # noqa: E402

SMOKE = ROOT / "search_spaces" / "smoke.yaml"
PARAMS = ["width", "beta", "lambda", "temperature", "sparsity", "bits", "optimizer", "lr"]
TRIALS = 4


def _args(experiment: str, seed: int, *more: str) -> list[str]:
    return ["--trials", str(TRIALS), "--set", "distill.steps=1000", "--set", f"experiment={experiment}",
            "--set", f"sampler_seed={seed}", *more]


def _row(scenario: str, st: dict, expected: int, recover_s: float, note: str = "") -> dict:
    return {"scenario": scenario, "expected": expected, **harness.counts(st, PARAMS), "recover_s": round(recover_s, 1),
            "note": note}


def stopped(root: Path, sig: signal.Signals, seed: int) -> dict:
    """A sweep stopped by `sig` during trial 2, then resumed."""
    experiment = f"faults-{sig.name.lower()}"
    proc, log = harness.start(root, experiment, SMOKE, *_args(experiment, seed))
    try:
        harness.wait_for_text(proc, log, "[1/")
        harness.wait_for_trial(root, proc, experiment, 2)
        proc.send_signal(sig)
    finally:
        code = harness.finish(proc)
    sweep = harness.sweep_id(log)
    before = harness.counts(harness.state(root, sweep, experiment), PARAMS)
    started = time.monotonic()
    proc, log = harness.start(root, f"{experiment}-resumed", SMOKE, *_args(experiment, seed), "--resume", sweep)
    resumed = harness.finish(proc)
    recover = time.monotonic() - started
    st = harness.state(root, sweep, experiment)
    assert resumed == 0, log.read_text()[-2000:]
    name = {"SIGINT": "Ctrl-C (SIGINT)", "SIGTERM": "SIGTERM", "SIGKILL": "driver SIGKILLed"}[sig.name]
    return _row(f"{name} mid-trial, then --resume", st, TRIALS, recover,
                f"exit {code}; left RUNNING before --resume: Optuna {before['optuna_running']}, MLflow {before['mlflow_running']}; "
                f"parent runs {len(st['parents'])}")


def outage(root: Path, seconds: float, seed: int) -> dict:
    """The MLflow server stops as trial 1 ends and is back `seconds` later."""
    (root / "server").mkdir()
    server = MlflowServer(root / "server").start()
    experiment = "faults-outage"
    try:
        proc, log = harness.start(root, experiment, SMOKE, *_args(experiment, seed), tracking_uri=server.uri)
        try:
            harness.wait_for_text(proc, log, "[1/")
            server.stop()
            time.sleep(seconds)
            server.start()
            back = time.monotonic()
            harness.wait_for_text(proc, log, "[2/", 600)
            recover = time.monotonic() - back
            code = harness.finish(proc, 600)
        finally:
            harness.finish(proc, 1) if proc.poll() is None else None
        st = harness.state(root, harness.sweep_id(log), experiment, tracking_uri=server.uri)
        parent = st["parents"][0].data.metrics
        return _row(f"MLflow server down {seconds:g} s mid-sweep", st, TRIALS, recover,
                    f"exit {code}; tracking_failures {parent.get('tracking_failures', 'n/a'):g}")
    finally:
        server.stop()


def failing(root: Path, seed: int) -> dict:
    """Every trial diverges (lr 1e6): `--max-failures 2` stops the sweep after two."""
    experiment = "faults-failing"
    started = time.monotonic()
    proc, log = harness.start(root, experiment, SMOKE, *_args(experiment, seed, "--max-failures", "2", "--set", "params.lr=1.0e6",
                                                             "--set", "params.optimizer=sgd", "--set", "params.sparsity=0.0"))
    code = harness.finish(proc)
    st = harness.state(root, harness.sweep_id(log), experiment)
    failed = sum(t.state.name == "FAIL" for t in st["study"].trials)
    tracebacks = log.read_text().count("Traceback")
    return _row("every trial fails (NaN loss), --max-failures 2", st, 0, time.monotonic() - started,
                f"exit {code}; Optuna FAIL {failed}; MLflow FAILED {sum(c.info.status == 'FAILED' for c in st['children'])}; "
                f"tracebacks on the console {tracebacks}")


def worker_killed(root: Path, seed: int) -> dict:
    """Every trial distils on two Ray Train workers (DDP), checkpointing every 25 steps; one worker of trial 2
    is SIGKILLed after its group has written three checkpoints."""
    experiment = "faults-worker"
    proc, log = harness.start(root, experiment, SMOKE, *_args(experiment, seed, "--set", "resources.launcher=ray_train",
                                                             "--set", "resources.num_workers=2", "--set",
                                                             "resources.cpus_per_worker=0.5", "--set", "distill.checkpoint_every=25",
                                                             "--set", "distill.steps=600"))
    try:
        harness.wait_for_text(proc, log, "[1/")
        seen: set[str] = set()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            seen |= {str(p.parent) for p in (root / "runs" / "train").glob("**/checkpoint_*/training.pt")}
            workers = harness.train_workers()
            if len(seen) >= 5 and len(workers) == 2:  # two of trial 1's, three of trial 2's at least
                os.kill(workers[-1], signal.SIGKILL)
                killed = time.monotonic()
                break
            time.sleep(0.05)
        else:
            raise AssertionError("no worker to kill")
        harness.wait_for_text(proc, log, "[2/", 600)
        recover = time.monotonic() - killed
        code = harness.finish(proc, 600)
    finally:
        harness.finish(proc, 1) if proc.poll() is None else None
    st = harness.state(root, harness.sweep_id(log), experiment)
    resumed = [c.data.tags["distill.resumed_from_step"] for c in st["children"] if "distill.resumed_from_step" in c.data.tags]
    return _row("a Ray Train worker SIGKILLed mid-distillation", st, TRIALS, recover,
                f"exit {code}; resumed from step {', '.join(resumed) or 'none'}")


def markdown(rows: list[dict]) -> str:
    head = "| scenario | trials expected | found in Tune | in Optuna | in MLflow | duplicates | left RUNNING | time to recover | notes |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['expected']} | {r['tune']} | {r['optuna']} | {r['mlflow']} | {r['duplicates']} | "
                     f"{r['optuna_running'] + r['mlflow_running']} | {r['recover_s']:g} s | {r['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "faults.json"))
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the MLflow server stays down")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow.tracking  # noqa: F401  (imported now: seconds that would otherwise fall on the first wait for a trial)
    import optuna  # noqa: F401

    rows = []
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        for seed, sig in enumerate((signal.SIGINT, signal.SIGTERM, signal.SIGKILL), start=1):
            rows.append(stopped(root, sig, seed))
            print(json.dumps(rows[-1]), flush=True)
        rows.append(outage(root, args.outage, 4))
        print(json.dumps(rows[-1]), flush=True)
        rows.append(failing(root, 5))
        print(json.dumps(rows[-1]), flush=True)
        rows.append(worker_killed(root, 6))
        print(json.dumps(rows[-1]), flush=True)
    table = markdown(rows)
    print(table)
    Path(args.out).write_text(json.dumps({"machine": f"{platform.node()} ({os.cpu_count()} CPUs)", "rows": rows,
                                          "markdown": table}, indent=1))


if __name__ == "__main__":
    main()
