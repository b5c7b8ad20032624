"""`Sweep`: a validated config and its task, run on Ray; and `load_config`, which binds a search space to its task."""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.config import load as config_load
from orchestrator.config.schema import SweepConfig
from orchestrator.core.errors import RayDied
from orchestrator.engine.client import is_client, run_on_cluster
from orchestrator.engine.cluster import RayletWatch, check_fits, ship_by_value, start_ray
from orchestrator.engine.context import SweepContext, resolve
from orchestrator.engine.preflight import check_reachable
from orchestrator.engine.recovery import check_resume, terminate_as_interrupt
from orchestrator.engine.result import SweepProgress, SweepResult
from orchestrator.engine.run import SweepRun
from orchestrator.io.records import TrialRecord
from orchestrator.tasks.base import Task, task_class, task_from_config
from orchestrator.tracking.base import Tracker

log = logging.getLogger("orchestrator")


def load_config(
    path: str | os.PathLike[str] | None = None, *, task: Task | None = None, overrides: Mapping[str, Any] | None = None,
    set_source: str = "override", flags: Mapping[str, str] | None = None,
) -> SweepConfig:
    """Read a search-space YAML, apply dotted-key overrides, validate everything, and bind it to its task: the
    one the YAML names (`task.name`), or `task`, a task object of your own (whose name it then takes), whose
    own parameters `params` may then declare. Errors are one-line `ConfigError`s naming the file (or the
    override), the key, the value and the fix.

    Example:
        >>> cfg = load_config("search_spaces/smoke.yaml", overrides={"params.bits": 4})
        >>> cfg.task.name, cfg.params["bits"], list(cfg.params)[:3]
        ('char_lm', Fixed(value=4), ['layers', 'width', 'heads'])
    """

    def bind(cfg: SweepConfig) -> SweepConfig:
        return (task if task is not None else task_class(cfg.task.name, cfg.source)).bind(cfg)

    return config_load.load_config(path, overrides=overrides, set_source=set_source, flags=flags, bind=bind)


class Sweep:
    """A multi-objective compression sweep over a validated `SweepConfig` and its `Task`.

    Example (the search space's own defaults, two trials):
        >>> sweep = Sweep.from_yaml("search_spaces/smoke.yaml", trials=2)
        >>> sweep.config.trials, sweep.task.name
        (2, 'char_lm')
    """

    def __init__(self, config: SweepConfig, *, task: Task | None = None) -> None:
        """`task`: a task object of your own (e.g. a `PythonTask`); None builds the one `config.task` names.
        `ConfigError` when the task cannot run this config. The storage, the tracking store and the Ray cluster
        are resolved here, once, from the config and the environment (`context`)."""
        self.task = task if task is not None else task_from_config(config)
        self.config = self.task.bind(config)
        self.task.check(self.config)
        self.context: SweepContext = resolve(self.config)
        self._reachable = False  # the storage, tracking store and Ray address answered (`check_reachable`)
        self.signals: list[int] = []  # SIGINT / SIGTERM received while `run` ran (SIGTERM ends it as Ctrl-C does)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, task: Task | None = None, **overrides: Any) -> "Sweep":
        """Load and validate a search space; overrides are keys (``trials=4``), dotted keys
        (``**{"distill.steps": 50}``) or nested dicts (``distill={"steps": 50}``). With `task`, the sweep runs
        that task and `params` may declare its own parameters."""
        return cls(load_config(path, task=task, overrides=overrides), task=task)

    def check_reachable(self, named: Mapping[str, str] | None = None) -> None:
        """`ConfigError` unless the storage takes a write, the tracking store answers and the Ray address answers,
        each within seconds (`engine.preflight`); `run` checks this first. `named`: how errors name a setting's
        source (the CLI: ``{"storage": "--storage"}``)."""
        check_reachable(self.context, named=named)
        self._reachable = True

    def check_resume(self, sweep_id: str) -> list[TrialRecord]:
        """The trials of sweep `sweep_id` in this storage (its files brought to this node); `ConfigError` unless it
        can be resumed with this config (`engine.recovery.check_resume`)."""
        return check_resume(self.context, sweep_id)

    def run(self, *, progress: Callable[[SweepProgress], None] | None = None, ray_logs: bool = False,
            resume: str | None = None, tracker: Tracker | None = None, verbose: bool = False) -> SweepResult:
        """Run every trial and return the result; blocks until the sweep ends.

        Args:
            progress: called after each trial ends.
            ray_logs: forward Ray workers' own log lines to this process (noisy; for debugging).
            resume: a sweep id (its parent run's name) in the same storage: finish that sweep, whose earlier trials
                count in the front (`trials` counts the whole sweep). Checked by `check_resume`.
            tracker: where the sweep records its runs (default: MLflow at the context's tracking URI); e.g.
                `orchestrator.tracking.memory.MemoryTracker()` for a sweep that needs no store.
            verbose: also print Ray Tune's own output (its experiment banner, trial tables and TensorBoard hint);
                by default only the product's progress is printed.
        """
        import ray

        if not self._reachable:
            self.check_reachable()
        previous = self.check_resume(resume) if resume is not None else None
        started = time.perf_counter()
        threading.Thread(target=_import_later_modules, name="orchestrator-imports", daemon=True).start()
        ship_by_value(self.task, self.context)
        own_ray = not ray.is_initialized()
        if own_ray:
            start_ray(self.config, self.context.ray_address, ray_logs=ray_logs)
        # the Ray it started on this machine, watched: its death is a `RayDied`, not the end of this process
        watch = RayletWatch() if own_ray and self.context.ray_address is None and \
            threading.current_thread() is threading.main_thread() else None
        try:
            with terminate_as_interrupt(self.signals):  # after ray.init, which sets SIGTERM handlers of its own
                result = self._run_on_ray(started, progress, resume, previous or [], tracker, verbose)
        except KeyboardInterrupt:
            if watch is not None and watch.died:  # before the trials: nothing of the sweep to finish
                raise RayDied(f"{watch.died} before the trials started; run the sweep again") from None
            raise
        finally:
            if watch is not None:
                watch.stop()
            if own_ray:
                ray.shutdown()
        if watch is not None and watch.died:
            raise RayDied(f"{watch.died}; {len(result.trials)} of its {self.config.trials} trials ended and are recorded",
                          sweep_id=result.sweep_id)
        return result

    def _run_on_ray(self, started: float, progress: Callable[[SweepProgress], None] | None, resume: str | None,
                    previous: list[TrialRecord], tracker: Tracker | None, verbose: bool) -> SweepResult:
        import ray

        ctx, cfg = self.context, self.config
        local = ctx.ray_address is None  # a Ray of its own; a cluster may grow (autoscaling): not held to what it has now
        slots = check_fits(cfg, ray.cluster_resources(), strict=local)
        if cfg.max_concurrent_trials is None:
            log.info("%d trial(s) at a time: as many as this Ray's CPUs and GPUs %sfit beside the measurement service "
                     "(max_concurrent_trials null)", slots, "" if local else "now ")
        elif slots < min(cfg.max_concurrent_trials, cfg.trials):
            log.info("%d trial(s) at a time: this Ray's CPUs and GPUs fit no more beside the measurement service "
                     "(max_concurrent_trials %d; see resources.*, measure.isolation)", slots, cfg.max_concurrent_trials)
        task = self.task

        def sweep_run(send: Callable[[SweepProgress], None] | None, at: float) -> SweepResult:
            return SweepRun(ctx, task, started=at, slots=slots, resume=resume, previous=previous, progress=send,
                            tracker=tracker, verbose=verbose).run()

        if is_client(ctx.ray_address):  # Tune would run on the cluster anyway: run the whole driver there
            return run_on_cluster(lambda send: sweep_run(send, time.perf_counter()), progress)
        return sweep_run(progress, started)


def _import_later_modules() -> None:
    """Import what the sweep needs only later (MLflow's SQL store, the plotting libraries: seconds of imports)
    while this process waits on Ray's start-up and the teacher, not after."""
    import matplotlib

    matplotlib.use("Agg")
    for name in ("matplotlib.pyplot", "plotly.express", "mlflow.store.tracking.sqlalchemy_store"):
        importlib.import_module(name)
