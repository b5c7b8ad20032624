"""`orchestrator sweep SPACE.yaml ...`: parse, validate (nothing starts on bad input), run, print the front."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import typing
from collections.abc import Mapping, Sequence


from orchestrator.api import Sweep, SweepProgress, SweepResult, load_config
from orchestrator.config.load import parse_set
from orchestrator.config.params import CORE_PARAMS
from orchestrator.config.schema import SweepConfig
from orchestrator.core.environ import tracking_uri as resolve_tracking_uri
from orchestrator.core.errors import ConfigError, RayDied, StorageFull
from orchestrator.core.objectives import Objectives
from orchestrator.engine.recovery import terminate_as_interrupt
from orchestrator.engine.result import distillations
from orchestrator.tracking.compare import compare
from orchestrator.tracking.sync import sync
from orchestrator.tracking.ui import run_ui

COMPRESSION_COLUMNS = ["sparsity", "bits", "optimizer"]  # the front table's core params, beside the task's searched ones


def front_columns(result: SweepResult) -> list[str]:
    """The front table's columns: the objectives, each held-out one's test score beside it, the compression ratio,
    the share of the teacher's held-out scores kept, then the student's searched shape and the compression."""
    objectives, columns = Objectives(result.objectives), ["run_name"]
    for name in objectives.names:
        columns += [name, f"test_{name}"]
    shape = [n for n in result.config.searched if n not in CORE_PARAMS]  # the task's own: the student's shape
    return [*columns, "compression_ratio", *(f"{o.name}_retained" for o in objectives.retained()), *shape, *COMPRESSION_COLUMNS]


def _figures(values: Mapping[str, float], objectives: Objectives) -> str:
    """`accuracy 0.4123  size_mb 0.0412 MB  latency_ms 0.51 ms`: objectives with their units."""
    return "  ".join(f"{o.name} {o.format(values[o.name])}" for o in objectives if o.name in values)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (argparse prints its usage first), exit 2 as always."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {' '.join(message.split())[:400]} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


FLAGS = {"trials": "--trials", "tracking_uri": "--tracking-uri", "storage": "--storage", "address": "--address",
         "register": "--register", "max_failures": "--max-failures"}  # config keys with a flag of their own: errors name the flag


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="orchestrator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sweep = sub.add_parser("sweep", help="run a compression sweep from a search-space YAML")
    sweep.add_argument("space", help="search-space YAML, e.g. search_spaces/quickstart.yaml")
    sweep.add_argument("--trials", type=int, help="number of trials (overrides `trials`)")
    sweep.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    sweep.add_argument("--storage", help="a directory or a URI (s3://bucket/prefix, gs://...) for teachers, students, "
                                         "artifacts and Ray results (default: $ORCHESTRATOR_STORAGE, else ./orchestrator_runs)")
    sweep.add_argument("--address", help="Ray cluster to join: auto, HOST:6379 or ray://HOST:10001 (default: $RAY_ADDRESS, "
                                         "set in a Ray job, else start a local Ray)")
    sweep.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override any YAML key, e.g. --set distill.steps=100 --set 'params.bits={choices: [4, 8]}'",
    )
    sweep.add_argument("--register", metavar="NAME", help="register the front's models in the MLflow Model Registry under "
                                                          "NAME, with aliases recommended, smallest, fastest, most-accurate")
    sweep.add_argument("--resume", metavar="SWEEP_ID", help="finish an earlier sweep (same storage and params): run what is left "
                                                            "of its `trials` (raise --trials to run more), rerunning interrupted ones")
    sweep.add_argument("--max-failures", type=int, metavar="N", help="stop the sweep cleanly once N trials failed "
                                                                     "(overrides `max_failures`; default: never)")
    sweep.add_argument("--ray-logs", action="store_true", help="show Ray workers' own log lines")
    sweep.add_argument("--verbose", action="store_true", help="also print Ray Tune's own output (its experiment banner and "
                                                              "trial tables)")
    tracking = "MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"
    ui = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1 and print the last sweep's pages")
    ui.add_argument("--tracking-uri", help=tracking)
    ui.add_argument("--port", type=int, default=5000, help="the UI's port (default 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="the address it listens on (default 127.0.0.1: this machine only; "
                                                        "0.0.0.0 opens it to every machine that reaches this one)")
    sync = sub.add_parser("sync", help="deliver to MLflow what a sweep journaled while its tracking store was away")
    sync.add_argument("sweep_id", metavar="SWEEP_ID", help="the sweep's id (its parent run's name)")
    sync.add_argument("--storage", help="the sweep's storage (default: $ORCHESTRATOR_STORAGE, else ./orchestrator_runs)")
    sync.add_argument("--tracking-uri", help="MLflow tracking URI (default: the sweep's own)")
    compare = sub.add_parser("compare", help="print the fronts of several sweeps side by side, with their hypervolumes")
    compare.add_argument("sweep_ids", nargs="+", metavar="SWEEP_ID", help="sweep ids (their MLflow parent runs' names)")
    compare.add_argument("--tracking-uri", help=tracking)
    compare.add_argument("--plot", default="fronts.png", help="where to write the plot of all fronts (default fronts.png)")
    return parser


def compare_main(args: argparse.Namespace) -> int:
    import pandas as pd

    try:
        table = compare(args.sweep_ids, tracking_uri=args.tracking_uri, plot=args.plot)
    except ConfigError as e:
        print(f"orchestrator: error: {e}", file=sys.stderr)
        return 2
    objectives = table.attrs["objectives"]
    reference = ", ".join(f"{n} {v:.4g}" for n, v in table.attrs["reference"].items())
    print(f"fronts over {', '.join(objectives)}; hypervolumes from the shared reference point ({reference}):")
    for sweep, hv in table.attrs["hypervolumes"].items():
        print(f"  {sweep}: {int((table['sweep'] == sweep).sum())} front points, hypervolume {hv:.4f}")
    columns = [c for c in ["sweep", "run_name", *objectives, *(f"test_{n}" for n in objectives), *COMPRESSION_COLUMNS] if c in table]
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(table[columns].to_string(index=False))
    print(f"plot of all fronts: {args.plot}")
    return 0


def sync_main(args: argparse.Namespace) -> int:
    try:
        done = sync(args.sweep_id, storage=args.storage, tracking_uri=args.tracking_uri)
    except ConfigError as e:
        print(f"orchestrator: error: {e}", file=sys.stderr)
        return 2
    if done.left:
        print(f"orchestrator: sync {done.sweep_id}: {done.delivered} record(s) delivered to MLflow at {done.tracking_uri}, "
              f"{done.left} still waiting in {done.journal} (it stopped answering); run it again", file=sys.stderr)
        return 1
    print(f"sync {done.sweep_id}: {done.delivered} record(s) delivered to MLflow at {done.tracking_uri}; nothing left in its journal")
    return 0


def _config(args: argparse.Namespace) -> SweepConfig:
    overrides = dict(parse_set(item) for item in args.sets)
    for key in FLAGS:
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    given = {key: flag for key, flag in FLAGS.items() if getattr(args, key) is not None}  # the rest came from --set
    return load_config(args.space, overrides=overrides, set_source="--set", flags=given)


def print_progress(p: SweepProgress) -> None:
    o = p.outcome
    if p.status == "COMPLETED" and o is not None:
        what = _figures(o.metrics, Objectives(p.objectives))
        if any(stage.value == "distill" and hit for stage, hit in o.cache_hits.items()):
            what += "  (student reused: cache hit)"
    elif p.status == "STOPPED" and o is not None:
        what = f"stopped early at step {o.stopped_at_step} ({o.stop_reason})"
    else:
        where = f"; traceback: {p.error_file}" if p.error_file else ""
        what = f"FAILED: {p.error[:300] or 'no cause recorded'}{where}"
    stopped = f", stopped early {p.stopped}" if p.stopped else ""
    print(
        f"[{p.done}/{p.total}] {p.run_name or 'trial ' + p.trial_id}: {what}  | running {p.running}, failed {p.failed}{stopped}, "
        f"front {p.front_size}, hypervolume {p.hypervolume:.4f}",
        flush=True,
    )


def print_result(result: SweepResult) -> None:
    import pandas as pd

    front, objectives = result.pareto, Objectives(result.objectives)
    columns = [c for c in front_columns(result) if c in front.columns]
    tested = "  ".join(f"{o.name} {result.teacher.metrics[f'test_{o.name}']:.4f}" for o in objectives.held_out()
                       if f"test_{o.name}" in result.teacher.metrics)
    print(f"\nPareto front over {', '.join(result.objectives)}: {len(front)} of {len(result.trials)} trials "
          f"(teacher: {_figures(result.teacher.metrics, objectives)}; test {tested})")
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.4g}".format):
        print(front[columns].to_string(index=False))
    pick = result.recommend()
    if pick is not None:
        print(f"recommended (knee of the front): {pick['run_name']}: {_figures(pick, objectives)}"
              + (f"\n  model: {pick['model_uri']}" if isinstance(pick.get("model_uri"), str) else ""))
    infeasible = int(((result.trials["status"] == "COMPLETED") & ~result.trials["feasible"]).sum())
    if infeasible:
        print(f"{infeasible} completed trials miss the sweep's constraints and are left off the front")
    reuse = distillations(result.trials)
    saved = f" ({reuse['distill_saved_s']:.0f} s of distillation saved by reuse)" if reuse.get("distill_saved_s") else ""
    students = f", {reuse['distillations']:.0f} students distilled for {len(result.trials)} trials{saved}" if reuse else ""
    print(f"\nwall time {result.wall_seconds:.0f} s, orchestration overhead {result.overhead:.0%}{students}")
    if result.config.register and result.models:
        print(f"registered {len(result.models)} front models as {result.config.register}: "
              f"models:/{result.config.register}@recommended (and @smallest, @fastest, @most-accurate)")
    uri = "" if result.tracking_uri == resolve_tracking_uri(None) else f" --tracking-uri {result.tracking_uri}"
    print(f"MLflow: sweep run {result.run_id} in experiment {result.experiment_id}. Open it with:\n  orchestrator ui{uri}")


def _resume_command(argv: Sequence[str], sweep_id: str) -> str:
    """This command again with ``--resume SWEEP_ID`` (the same storage, tracking URI, trials and overrides)."""
    import shlex

    words, skip = [], False
    for word in argv:
        if skip or word == "--resume":
            skip = not skip and word == "--resume"
            continue
        if not word.startswith("--resume="):
            words.append(word)
    return shlex.join(["orchestrator", *words, "--resume", sweep_id])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.command == "ui":
        return run_ui(resolve_tracking_uri(args.tracking_uri), args.port, host=args.host)
    if args.command == "compare":
        return compare_main(args)
    if args.command == "sync":
        return sync_main(args)
    try:
        cfg = _config(args)
        sweep = Sweep(cfg)
        sweep.check_reachable({key: flag for key, flag in FLAGS.items() if getattr(args, key) is not None})
        if args.resume:
            sweep.check_resume(args.resume)
    except ConfigError as e:
        print(f"orchestrator: error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    print(f"sweep {cfg.name}: {cfg.trials} trials{' in all, resuming ' + args.resume if args.resume else ''}, sampler "
          f"{cfg.sampler}, up to {cfg.max_concurrent_trials or 'as many as fit'} at once; storage {sweep.context.storage.where}", flush=True)
    signals = sweep.signals  # SIGINT/SIGTERM received while it ran
    with terminate_as_interrupt(signals):
        try:
            result = sweep.run(progress=print_progress, ray_logs=args.ray_logs, resume=args.resume, verbose=args.verbose)
        except ConfigError as e:  # what only the prepared teacher can tell (e.g. an objective the task does not measure)
            print(f"orchestrator: error: {e}", file=sys.stderr)
            return 2
        except (RayDied, StorageFull) as e:  # its Ray ended from outside, or its disk filled: ended trials recorded
            resume = f". Finish it with: {_resume_command(argv, e.sweep_id)}" if e.sweep_id else ""
            print(f"orchestrator: error: {e}{resume}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:  # before the trials started: nothing of the sweep to finish
            print(f"orchestrator: {_signal_name(signals)}: stopped before the trials started; the sweep's MLflow run is "
                  "closed KILLED", file=sys.stderr)
            return 128 + (signals[-1] if signals else signal.SIGINT)
    print_result(result)
    if result.stop_reason == "max_failures":
        print(f"orchestrator: stopped after {cfg.max_failures} failed trials (max_failures); causes above. Finish it with: "
              f"{_resume_command(argv, result.sweep_id)}", file=sys.stderr)
        return 1
    if result.interrupted:
        print(f"orchestrator: {_signal_name(signals)}: stopped with {len(result.trials)} of {cfg.trials} trials ended. Finish "
              f"it with: {_resume_command(argv, result.sweep_id)}", file=sys.stderr)
        return 128 + (signals[-1] if signals else signal.SIGINT)
    failed = int((result.trials["status"] == "ERROR").sum())
    return 1 if failed == len(result.trials) else 0


def _signal_name(signals: Sequence[int]) -> str:
    """The signal that stopped the sweep (during the trials Tune takes SIGINT itself, unrecorded)."""
    return signal.Signals(signals[-1]).name if signals else "SIGINT"


if __name__ == "__main__":
    sys.exit(main())
