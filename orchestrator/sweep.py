"""A sweep: the only place that builds a Ray Tune `Tuner`.

`Sweep.run` is a few named steps: Ray up -> `prepare.prepared` (the task's data, the teacher, the
measurement service and the teacher's outputs, cached in storage) -> `_start_tracking` (the MLflow parent run) -> `_tuner` (OptunaSearch over
`trial.tune_trial`, with the tracking and monitoring callbacks) -> `_finish` (front tags, front files,
overhead accounting, the `SweepResult`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import sys
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pandas as pd
import yaml

from orchestrator.client import connect, is_client, run_on_cluster
from orchestrator.config import ConfigError, SweepConfig, load_config
from orchestrator.config.schema import show
from orchestrator.environ import environ
from orchestrator.monitor import ConstrainedOptunaSearch, FailureLimit, TrialMonitor
from orchestrator.results import (
    SweepProgress,
    SweepResult,
    export_pretrained,
    load_model,
    normalized_hypervolume,
    reference_point,
    work_slot_seconds,
)
from orchestrator.objectives import OBJECTIVES, directions
from orchestrator.resources import TRIAL_MEMORY_BYTES, check_fits, trial_resources
from orchestrator.prepare import Prepared, prepared
from orchestrator.recovery import recover_study, terminate_as_interrupt
from orchestrator.space import ObjectiveConstraints
from orchestrator.storage import fetch
from orchestrator.sweep_files import CONFIG_FILE, FRONT_FILE, STUDY_FILE, TRIALS_FILE, SweepFiles
from orchestrator.tasks import TASKS, Task, task_from_config

log = logging.getLogger("orchestrator")

# Ray Train settings for every process of a Ray the sweep starts (pass them too when you start your own):
# a faster health-check poll saves ~2 s per trial; worker start-up on a loaded 2-core machine can near the
# 60 s default timeout.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}
# The Ray a sweep starts for itself listens on this machine's loopback only (its GCS, raylet, workers and agents;
# Ray's own single-machine mode, which it resolves `_node_ip_address="127.0.0.1"` away from): no other machine
# reaches it. A cluster's nodes are set up by `ray start` (cluster.yaml), not here.
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def task_accepts_own_params(name: str) -> bool:
    """Whether the registered task `name` lets `params` declare parameters of its own."""
    return name in TASKS and TASKS[name].user_params


class Sweep:
    """A multi-objective compression sweep over a validated `SweepConfig` and its `Task`.

    Example (the search space's own defaults, two trials):
        >>> sweep = Sweep.from_yaml("search_spaces/smoke.yaml", trials=2)
        >>> sweep.config.trials, sweep.task.name
        (2, 'char_lm')
    """

    def __init__(self, config: SweepConfig, *, task: Task | None = None) -> None:
        """`task`: a task object of your own (e.g. a `PythonTask`); None builds the one `config.task` names.
        `ConfigError` when the task cannot run this config."""
        self.config = config
        self.task = task if task is not None else task_from_config(config)
        self.task.check(config)
        self._reachable = False  # the storage, tracking store and Ray address answered (`check_reachable`)
        self.signals: list[int] = []  # SIGINT / SIGTERM received while `run` ran (SIGTERM ends it as Ctrl-C does)

    def check_reachable(self, named: Mapping[str, str] | None = None) -> None:
        """`ConfigError` unless the config's storage takes a write, its MLflow store answers and its Ray address
        answers, each within seconds (`orchestrator.config.reachable`); `run` checks this first.
        `named`: how errors name a key's source (the CLI: ``{"storage": "--storage"}``)."""
        from orchestrator.config.reachable import check_reachable

        check_reachable(self.config, named=named)
        self._reachable = True

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], *, task: Task | None = None, **overrides: Any) -> "Sweep":
        """Load and validate a search space; overrides are keys (``trials=4``), dotted keys
        (``**{"distill.steps": 50}``) or nested dicts (``distill={"steps": 50}``). With `task`, the sweep
        runs that task (the YAML's `task.name` is set to its name) and `params` may declare its own."""
        if task is not None:
            overrides = {**overrides, "task.name": task.name or "python"}
        user_params = task.user_params if task is not None else task_accepts_own_params
        return cls(load_config(path, overrides=overrides, user_params=user_params), task=task)

    def run(
        self, *, progress: Callable[[SweepProgress], None] | None = None, ray_logs: bool = False,
        resume: str | None = None,
    ) -> SweepResult:
        """Run every trial and return the result; blocks until the sweep ends.

        Args:
            progress: called after each trial ends.
            ray_logs: forward Ray workers' own log lines to this process (noisy; for debugging).
            resume: a sweep id (its parent run's name) in the same storage: run `trials` more trials in that
                sweep's Optuna study, whose earlier trials count in the front. Checked by `check_resume`.
        """
        import ray

        cfg = self.config
        if not self._reachable:
            self.check_reachable()
        previous = self.check_resume(resume) if resume is not None else None
        started = time.perf_counter()
        threading.Thread(target=_import_later_modules, name="orchestrator-imports", daemon=True).start()
        _ship_by_value(self.task)
        own_ray = not ray.is_initialized()
        local = cfg.ray_address is None  # a Ray of its own; a cluster may grow (autoscaling): not held to what it has now
        if own_ray:
            for k, v in RAY_ENV.items():
                os.environ.setdefault(k, v)
            init = dict(include_dashboard=False, log_to_driver=ray_logs, runtime_env={"env_vars": RAY_ENV})
            try:
                if is_client(cfg.ray_address):
                    connect(cfg.ray_address, **init)
                else:  # "local": never a cluster that a `ray start` on this machine left running or behind
                    with _loopback_only(local):
                        ray.init(address=cfg.ray_address or "local", num_cpus=cfg.resources.local_cpus if local else None, **init)
            except ray.exceptions.AuthenticationError as e:  # token authentication on, and no (or another) token here
                ray.shutdown()
                raise ConfigError(f"address {show(cfg.ray_address)}: the Ray cluster refused this process's token "
                                  f"({' '.join(str(e).split())[:160]}); set RAY_AUTH_TOKEN to its token (`ray get-auth-token` "
                                  "on the head)") from None
            except ConnectionError as e:  # a port that answered the check but is no Ray, or a cluster that went away
                ray.shutdown()
                raise ConfigError(f"address {show(cfg.ray_address)}: Ray could not connect "
                                  f"({' '.join(str(e).split())[:200]}); give the address `ray start --head` printed (a cluster "
                                  "with token authentication also needs its token in RAY_AUTH_TOKEN)") from None
        try:
            with terminate_as_interrupt(self.signals):  # after ray.init, which sets SIGTERM handlers of its own
                return self._run_on_ray(started, progress, resume, previous or [], local)
        finally:
            if own_ray:
                ray.shutdown()

    def _run_on_ray(self, started: float, progress: Callable[[SweepProgress], None] | None, resume: str | None,
                    previous: list[dict[str, Any]], local: bool) -> SweepResult:
        import ray

        cfg = self.config
        slots = check_fits(cfg, ray.cluster_resources(), strict=local)
        if cfg.max_concurrent_trials is None:
            log.info("%d trial(s) at a time: as many as this Ray's CPUs and GPUs %sfit beside the measurement service "
                     "(max_concurrent_trials null)", slots, "" if local else "now ")
        elif slots < min(cfg.max_concurrent_trials, cfg.trials):
            log.info("%d trial(s) at a time: this Ray's CPUs and GPUs fit no more beside the measurement service "
                     "(max_concurrent_trials %d; see resources.*, measure.cpus)", slots, cfg.max_concurrent_trials)
        if is_client(cfg.ray_address):  # Tune would run on the cluster anyway: run the whole driver there
            task = self.task
            return run_on_cluster(lambda send: _run(cfg, task, time.perf_counter(), send, resume=resume,
                                                    previous=previous, slots=slots), progress)
        return _run(cfg, self.task, started, progress, resume=resume, previous=previous, slots=slots)

    def check_resume(self, sweep_id: str) -> list[dict[str, Any]]:
        """The trials of sweep `sweep_id` in this storage (its files brought to this node); `ConfigError`
        unless it can be resumed with this config (`orchestrator.recovery.check_resume`)."""
        from orchestrator.recovery import check_resume

        return check_resume(self.config, sweep_id)


def _import_later_modules() -> None:
    """Import what the sweep needs only later (MLflow's SQL store, the plotting libraries: seconds of
    imports) while this process waits on Ray's start-up and the teacher, not after."""
    import matplotlib

    matplotlib.use("Agg")
    for name in ("matplotlib.pyplot", "plotly.express", "mlflow.store.tracking.sqlalchemy_store"):
        importlib.import_module(name)


def _ship_by_value(task: Task) -> None:
    """Let Ray's workers unpickle a task whose code lives in modules they cannot import (a script, a test
    file, a module run by path): the modules of the task's class and of what it holds (your builder,
    metric, teacher class) are pickled by value, as cloudpickle does for `__main__`. Installed packages
    and this package are left to import."""
    from ray import cloudpickle

    installed = tuple({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    for obj in (task, *vars(task).values()):
        owner = obj if inspect.isfunction(obj) or inspect.isclass(obj) else type(obj)
        name = getattr(owner, "__module__", None) or ""
        module, file = sys.modules.get(name), getattr(sys.modules.get(name), "__file__", None)
        if module is None or file is None or name == "__main__" or name.split(".")[0] == "orchestrator" \
                or os.path.abspath(file).startswith(installed):
            continue
        cloudpickle.register_pickle_by_value(module)


def _searcher(cfg: SweepConfig, files: SweepFiles, resume: str | None) -> ConstrainedOptunaSearch:
    """OptunaSearch over the space, its study named by the sweep id in `study_storage` or in the sweep's
    `optuna.db` (Optuna's own tools read it, and a later sweep resumes it):
    optuna.load_study(study_name=<sweep id>, storage="sqlite:///<storage>/sweeps/<sweep id>/optuna.db")."""
    import optuna

    from orchestrator.config import searched_grid
    from orchestrator.config.samplers import make_sampler
    from orchestrator.space import DefineByRun

    study_url, sweep_id = files.study_url(cfg.study_storage), files.sweep_id
    sampler_seed = cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed
    if resume:  # a sampler's random state is not stored: a fresh stream, or it would redo the first trials
        sampler_seed += len(optuna.load_study(study_name=sweep_id, storage=study_url).trials)
    return ConstrainedOptunaSearch(
        space=DefineByRun(cfg.params),
        metric=list(cfg.objectives),
        mode=directions(cfg.objectives),
        sampler=make_sampler(cfg.sampler, seed=sampler_seed, grid=searched_grid(cfg.params),
                             population_size=cfg.population_size, options=cfg.sampler_options),
        limits=ObjectiveConstraints(cfg.constraints),
        storage=optuna.storages.RDBStorage(study_url),
        study_name=sweep_id,
        points_to_evaluate=None if resume else [dict(p) for p in cfg.initial_points] or None,
    )


def _run(
    cfg: SweepConfig, task: Task, started: float, progress: Callable[[SweepProgress], None] | None, *,
    resume: str | None, previous: list[dict[str, Any]], slots: int,
) -> SweepResult:
    import optuna
    from ray import tune

    from orchestrator.tracking.sweep_run import start_sweep_run, trial_runs
    from orchestrator.trial import TrialContext, tune_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines would drown the progress
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sweep_id = resume or f"{cfg.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    files = SweepFiles(cfg.store, sweep_id)
    if resume:  # the driver's node continues the sweep's files (and its SQLite study) from the storage
        files.pull(TRIALS_FILE, FRONT_FILE, *(() if cfg.study_storage else (STUDY_FILE,)))
    remaining = max(cfg.trials - len(previous), 0)  # `trials` counts the whole sweep, resumed or not

    with prepared(cfg, task) as prep:
        setup_seconds = time.perf_counter() - started - prep.seconds
        tracker, parent, env = start_sweep_run(cfg, task, sweep_id, prep, previous if resume else None)
        reference = reference_point(cfg, prep.teacher)
        monitor = TrialMonitor(
            remaining, progress, reference=reference, constraints=cfg.constraints, files=files,
            run_ids=tracker.child_ids, run_names=tracker.run_names, previous=previous, param_names=tuple(cfg.params),
            log_hypervolume=lambda hv, n: tracker.log_metrics(parent, {"hypervolume": hv}, step=n),
        )
        status = "FAILED"
        try:
            if not resume:
                files.write_text(CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            else:
                recover_study(cfg, files, tracker, parent, previous)
            ctx = TrialContext(config=cfg, task=task, data=prep.data, teacher=prep.teacher,
                               teacher_outputs=prep.outputs, sweep_id=sweep_id, service=prep.service,
                               objectives=dict(OBJECTIVES))
            trainable = tune.with_resources(tune.with_parameters(tune_trial, ctx=ctx), trial_resources(cfg))
            searcher = _searcher(cfg, files, resume)
            monitor.tell = searcher.tell
            limit = FailureLimit(monitor, cfg.max_failures)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher, num_samples=remaining,
                    max_concurrent_trials=slots,
                    reuse_actors=True,  # a trial's driver process (torch imported, teacher files warm) serves the next
                ),
                run_config=tune.RunConfig(
                    name=f"{sweep_id}-resumed-{stamp}" if resume else sweep_id,
                    storage_path=cfg.store.location("tune"),
                    # the monitor records a trial (trials.jsonl, then Optuna) before its MLflow run is finished
                    callbacks=[monitor, trial_runs(cfg, task, tracker, env, first_number=tracker.last_number + 1)],
                    stop=limit, verbose=0,
                ),
            )
            tune_started = time.perf_counter()
            # Validation reports during distillation (and the result of a trial stopped early) hold no objectives,
            # which Tune's strict metric check refuses; the searcher and the monitor handle them. A failed trial's
            # traceback goes to its error.txt and MLflow run, not to the console (the progress line has its cause).
            with environ(TUNE_DISABLE_STRICT_METRIC_CHECKING="1" if cfg.early_stopping.enabled else None,
                          TUNE_PRINT_ALL_TRIAL_ERRORS="0"):
                if remaining:
                    tuner.fit()
                else:
                    log.info("all %d trials of sweep %s have run; finishing it", cfg.trials, sweep_id)
            if searcher.repeats_skipped:  # configurations proposed again after they completed: answered, not run
                log.info("%d repeated configurations were answered from the study instead of run", searcher.repeats_skipped)
                tracker.log_metrics(parent, {"repeats_skipped": searcher.repeats_skipped})
            searcher.tell_all()
            if remaining and len(monitor.rows) - len(previous) < remaining:  # Ctrl-C, SIGTERM or --max-failures
                from orchestrator.recovery import close_running

                closed = close_running(searcher._ot_study)
                if closed:
                    log.info("Optuna: %d trial(s) stopped before they ended told FAIL (interrupted); --resume runs "
                             "their configurations again", len(closed))
            result = _finish(cfg, task, monitor, tracker, parent, prep, started=started, setup_seconds=setup_seconds,
                             tune_started=tune_started, tune_stopped=time.perf_counter(), previous=len(previous),
                             files=files, slots=slots, remaining=remaining,
                             stop_reason="max_failures" if limit.reached else "interrupted")
            status = "KILLED" if result.interrupted else "FINISHED"
            return result
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the trials (Tune catches it during them)
            status = "KILLED"
            raise
        finally:
            tracker.end_sweep(status)


def _finish(
    cfg: SweepConfig, task: Task, monitor: TrialMonitor, tracker: Any, parent: str, prep: Prepared, *,
    started: float, setup_seconds: float, tune_started: float, tune_stopped: float, previous: int, files: SweepFiles,
    slots: int, remaining: int, stop_reason: str,
) -> SweepResult:
    """After the trials: front and feasibility tags, the front files, overhead accounting, the result."""
    from orchestrator.plots import write_front_files
    from orchestrator.tracking.sweep_run import record_front

    trials = monitor.table()
    tune_seconds = tune_stopped - tune_started
    interrupted = len(trials) - previous < remaining  # Tune returns early on Ctrl-C instead of raising
    if interrupted:
        why = f"after {cfg.max_failures} failed trials (max_failures)" if stop_reason == "max_failures" else "(interrupted)"
        log.warning("sweep stopped %s with %d of its %d trials ended; the front below covers those", why, len(trials),
                    cfg.trials)
    front_files = write_front_files(trials, files.path(), cfg.objectives)
    for path in front_files:
        cfg.store.publish(path)
    files.publish(STUDY_FILE)
    wall = time.perf_counter() - started
    # Slot time: setup and the teacher phase use one slot; the trial phase `slots` (as many trials as run
    # at once: `max_concurrent_trials`, or fewer when the resources fit fewer), each only while a trial
    # remained that could use it (a slot idle because the search had no trial left for it, as in the last
    # trial of a sweep, is `tail_idle_seconds`, not orchestration).
    ends = monitor.end_times + [tune_stopped] * len(monitor.running)  # unfinished (interrupted) trials
    busy = work_slot_seconds(ends, tune_started, tune_stopped, slots)
    capacity = wall - tune_seconds + busy
    teacher, outputs = prep.teacher, prep.outputs
    stage_seconds = teacher.seconds_now + (
        outputs.seconds if outputs and not outputs.cache_hit else 0.0
    ) + float(trials.iloc[previous:].get("time_stages_s", pd.Series(dtype=float)).fillna(0).sum())
    overhead = 1 - stage_seconds / capacity
    tracker.log_metrics(parent, {
        "trials_completed": int((trials["status"] == "COMPLETED").sum()),
        "trials_failed": int((trials["status"] == "ERROR").sum()),
        "trials_stopped_early": int((trials["status"] == "STOPPED").sum()),
        "front_size": int(trials["pareto"].sum()),
        "wall_seconds": wall,
        "setup_seconds": setup_seconds,
        "teacher_seconds": prep.seconds,
        "trials_seconds": tune_seconds,
        "stage_seconds": stage_seconds,
        "orchestration_overhead": overhead,
        "tail_idle_seconds": tune_seconds * slots - busy,
    })
    result = SweepResult(
        config=cfg, trials=trials, teacher=teacher, run_id=parent, experiment_id=tracker.experiment_id,
        tracking_uri=cfg.resolved_tracking_uri, wall_seconds=wall, overhead=overhead, interrupted=interrupted,
        hypervolume=normalized_hypervolume(trials, reference_point(cfg, teacher)), task=task,
        stop_reason=stop_reason if interrupted else "", sweep_id=files.sweep_id,
    )
    pick = result.recommend()
    example = task.example(task.load_data(fetch(prep.data.path)))  # the models' input example
    models = record_front(cfg, task, tracker, parent, trials, files=front_files, hypervolumes=monitor.hypervolumes, example=example,
                 recommended=None if pick is None else pick["trial_id"], sweep_id=files.sweep_id, out_dir=files.path())
    trials["model_uri"] = trials["trial_id"].map(models)
    return dataclasses.replace(result, models=models)


@contextlib.contextmanager
def _loopback_only(on: bool) -> Iterator[None]:
    """While a local Ray starts: Ray's single-machine mode, in this process (Ray read the variable when it was
    imported) and in the processes it starts (they inherit it)."""
    if not on:
        yield
        return
    from ray._private import ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        with environ(**LOCAL_RAY_ENV):
            yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


__all__ = ["RAY_ENV", "TRIAL_MEMORY_BYTES", "Sweep", "SweepProgress", "SweepResult", "export_pretrained", "load_model",
           "trial_resources"]
