"""A sweep's steps, in order, and the only place that builds a Ray Tune `Tuner`:

prepare (the task's data, the teacher, the measurement service and the teacher's outputs: `engine.prepare`)
-> track (the sweep's run, or the resumed sweep's run reopened, and its Optuna study settled)
-> tune (OptunaSearch over `engine.trial.tune_trial`, every trial recorded by `engine.recorder.Recorder`)
-> finish (the front's files and tags, its models, the accounting, the `SweepResult`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import uuid
from types import SimpleNamespace
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import optuna
import pandas as pd
import torch
import yaml
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.progress_reporter import TrialProgressCallback

from orchestrator.config.params import CORE_PARAMS
from orchestrator.core.environ import environ
from orchestrator.core.errors import ConfigError, StorageFull, no_space
from orchestrator.core.fronts import normalized_hypervolume
from orchestrator.engine.cluster import trial_resources
from orchestrator.engine.context import SweepContext
from orchestrator.engine.prepare import prepared
from orchestrator.engine.recorder import FailureLimit, Recorder
from orchestrator.engine.recovery import close_running, recover_study
from orchestrator.engine.result import SweepProgress, SweepResult, distillations, fidelity_figures
from orchestrator.engine.search import make_searcher
from orchestrator.engine.trial import TrialContext, tune_trial
from orchestrator.io.plots import write_front_files, write_hypervolume_plot
from orchestrator.io.records import TrialOutcome, TrialRecord
from orchestrator.io.storage import fetch
from orchestrator.io.sweep_files import CONFIG_FILE, FRONT_FILE, JOURNAL_DIR, STUDY_FILE, TRIALS_FILE, SweepFiles
from orchestrator.tasks.base import Task
from orchestrator.tracking.base import FAILED, FINISHED, KILLED, Tracker
from orchestrator.tracking.environment import environment_tags
from orchestrator.tracking.front import record_front
from orchestrator.tracking.journal import Journal
from orchestrator.tracking.mlflow_store import MlflowTracker, client_settings
from orchestrator.tracking.sweep_runs import SweepRuns, saved_view

log = logging.getLogger("orchestrator")
TUNE_STATE_EVERY_S = 10**9  # Tune's experiment state: written when Tune starts and when it ends, not in between


def work_slot_seconds(end_times: list[float], start: float, stop: float, slots: int) -> float:
    """Slot-seconds of a trial phase from `start` to `stop` in which a slot had work: while n of the
    trials had not ended, min(slots, n) slots count. `end_times` holds one end time per trial.

    >>> work_slot_seconds([10.0, 25.0], 0.0, 25.0, 2)  # two trials side by side, the second ends last
    35.0
    """
    total, t, remaining = 0.0, start, len(end_times)
    for end in sorted(end_times):
        total += (end - t) * min(slots, remaining)
        t, remaining = end, remaining - 1
    return total


class SweepRun:
    """One run of a sweep (see the module docstring): `run()` takes its steps and returns its result."""

    def __init__(self, ctx: SweepContext, task: Task, *, started: float, slots: int, resume: str | None = None,
                 previous: list[TrialRecord] | None = None, progress: Callable[[SweepProgress], None] | None = None,
                 tracker: Tracker | None = None, verbose: bool = False) -> None:
        self.ctx, self.task, self.started, self.slots, self.resume = ctx, task, started, slots, resume
        self.verbose = verbose  # Tune's own output too
        self.fresh_study = not resume  # the sweep's study is made now (a new sweep, or one stopped before its first trial)
        self.recorder: Recorder | None = None  # made once the sweep's run is tracked
        self.previous, self.progress, self.tracker = list(previous or []), progress, tracker
        cfg = ctx.config
        self.stamp = time.strftime("%Y%m%d-%H%M%S")
        self.files = SweepFiles(ctx.storage, resume or f"{cfg.name}-{self.stamp}-{uuid.uuid4().hex[:6]}")
        self.remaining = max(cfg.trials - len(self.previous), 0)  # `trials` counts the whole sweep, resumed or not

    @property
    def sweep_id(self) -> str:
        return self.files.sweep_id

    def study_exists(self) -> bool:
        """Whether the sweep's Optuna study was made (its first trial was about to start)."""
        url = self.files.study_url(self.ctx.config.study_storage)
        return self.sweep_id in optuna.study.get_all_study_names(storage=url)

    def run(self) -> SweepResult:
        """The sweep's steps; `StorageFull` (one line, naming where) when a write found no space."""
        try:
            return self._run()
        except Exception as e:
            full = self.recorder.full if self.recorder is not None else None  # a trial's write, or the sweep's own
            if full is None and not no_space(e):
                raise
            cause = full or f"{type(e).__name__}: {e}"
            raise StorageFull(f"storage {self.ctx.storage.where} is full ({' '.join(str(cause).split())[:300]}); the trials that "
                              "ended are recorded; free space there, then finish the sweep with --resume "
                              f"{self.sweep_id}", sweep_id=self.sweep_id) from None

    def _run(self) -> SweepResult:
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines would drown the progress
        if self.resume:  # the driver's node continues the sweep's files (and its SQLite study) from the storage
            self.files.pull(TRIALS_FILE, FRONT_FILE, *(() if self.ctx.config.study_storage else (STUDY_FILE,)))
            if not self.study_exists():  # stopped before its first trial (e.g. while its teacher trained)
                log.info("sweep %s stopped before its first trial; its trials start now", self.sweep_id)
                self.fresh_study = True
        else:  # first thing: a sweep stopped at any point after this can be resumed by its id
            self.files.write_text(CONFIG_FILE, yaml.safe_dump(self.ctx.config.to_dict(), sort_keys=False))
        with client_settings(), prepared(self.ctx, self.task) as prep:
            self.prep = prep
            self.setup_seconds = time.perf_counter() - self.started - prep.seconds
            self.runs = self.track()
            log.info("sweep %s: its files in %s, its MLflow run %s", self.sweep_id, self.files.location(), self.runs.parent_id)
            self.recorder = Recorder(self.ctx, self.runs, files=self.files, total=self.remaining, reference=prep.reference,
                                     previous=self.previous, progress=self.progress)
            status = FAILED
            try:
                if not self.fresh_study:
                    recover_study(self.ctx, self.files, self.runs, self.previous)
                limit = self.tune()
                if self.recorder.full:  # the sweep stopped: nothing more is written to a full storage
                    status = KILLED
                    raise OSError(28, f"No space left on device ({self.recorder.full})")
                result = self.finish(stop_reason="max_failures" if limit.reached else "interrupted")
                status = KILLED if result.interrupted else FINISHED
                return result
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM before the trials (Tune catches it during them)
                status = KILLED
                raise
            finally:
                self.runs.end(status)
                self.deliver_journal()

    def deliver_journal(self) -> None:
        """What the tracker journaled and could not deliver yet: tried once more, for the retry window; what is
        still left is one warning with the command that delivers it later."""
        tracker = self.runs.tracker
        if not tracker.pending():
            return
        tracker.flush(wait=True)
        if tracker.pending():
            log.warning("tracking: %d record(s) of sweep %s wait in its journal (MLflow at %s is away); deliver them once "
                        "it answers with: orchestrator sync %s --storage %s --tracking-uri %s", tracker.pending(), self.sweep_id,
                        tracker.uri, self.sweep_id, self.ctx.storage.where, tracker.uri)

    # -- track --------------------------------------------------------------------------------------
    def track(self) -> SweepRuns:
        """The sweep's run: the config as params, what was reused and the environment as tags, the teacher's
        figures as metrics; for a resumed sweep the same run, reopened."""
        cfg, prep = self.ctx.config, self.prep
        tracker = self.tracker or MlflowTracker(self.ctx.tracking_uri, cfg.experiment or cfg.name, outage_s=cfg.tracking_retry_s)
        if isinstance(tracker, MlflowTracker) and tracker.journal is None:  # what the store could not take waits there
            tracker.journal = Journal(self.files.path(JOURNAL_DIR), publish=self.ctx.storage.publish)
        if self.resume and tracker.pending():  # the records a driver killed during an outage left, first
            delivered = tracker.flush(wait=True)
            if tracker.pending():
                raise ConfigError(f"--resume {self.sweep_id}: MLflow at {tracker.uri} did not take the {tracker.pending()} "
                                  f"record(s) its journal holds ({tracker.journal.directory}); resume once it answers")
            log.info("tracking: %d record(s) the sweep journaled while MLflow was away delivered", delivered)
        env = environment_tags(device=_device(cfg.resources.use_gpu), data_key=prep.data.key)
        runs = SweepRuns(tracker, self.sweep_id, trial_tags={"pipeline": cfg.pipeline.label, "task": self.task.name, **env},
                         describe=self.describe_trial)
        if self.resume:
            if runs.reopen({r.trial_id: r for r in self.previous}) is not None:  # its params stay the first run's
                runs.log(tags={"resumed": "true", "previous_trials": str(len(self.previous)), "trials_total": str(cfg.trials),
                               "stale_runs_closed": str(runs.stale_closed)})
                log.info("tracking: sweep run %s reopened%s", runs.parent_id, f"; {runs.stale_closed} trial run(s) its driver "
                         "left RUNNING closed KILLED" if runs.stale_closed else "")
                return runs
            log.warning("tracking: no run of sweep %s in experiment %s of %s; the resumed sweep gets a new one", self.sweep_id,
                        tracker.experiment_id, tracker.uri)
        runs.start(params=cfg.to_dict(), tags={**self._sweep_tags(), **env}, description=self.describe_sweep(),
                   metrics=self._teacher_figures(), view=saved_view(self.ctx.objectives, cfg.searched, self.sweep_id))
        return runs

    def _sweep_tags(self) -> dict[str, str]:
        cfg, teacher, outputs, where = self.ctx.config, self.prep.teacher, self.prep.outputs, self.prep.service_where
        return {"task": self.task.name, "teacher_key": teacher.key, "teacher_cache_hit": str(teacher.cache_hit).lower(),
                "teacher_measurements_cache_hit": str(teacher.measure_cache_hit).lower(), "storage": self.ctx.storage.where,
                "pipeline": cfg.pipeline.label, "objectives": ",".join(cfg.objectives), "measure.node": ",".join(w["node"] for w in where),
                "measure.device": where[0]["device"], "measure.cores": ",".join(map(str, where[0]["cores"])),
                "measure.replicas": str(len(where)),
                **({"register": cfg.register} if cfg.register else {}),
                **({"warning": "; ".join(f"teacher: {w}" for w in teacher.warnings)} if teacher.warnings else {}),
                **({"resumed": "true", "previous_trials": str(len(self.previous))} if self.resume else {}),
                **({"teacher_outputs_key": outputs.key, "teacher_outputs_cache_hit": str(outputs.cache_hit).lower(),
                    "teacher_outputs_precision": outputs.precision} if outputs else {})}

    def _teacher_figures(self) -> dict[str, float]:
        """The teacher's measured figures (`teacher_<name>`), the hypervolume's reference point and the teacher outputs' cost."""
        teacher, outputs = self.prep.teacher, self.prep.outputs
        return {**{f"teacher_{k}": v for k, v in teacher.metrics.items()},  # all it measured: size coded as the students' and plain, test scores
                **{f"hypervolume_ref_{k}": v for k, v in self.prep.reference.items()},
                **({"teacher_outputs_mb": outputs.size_bytes / 1e6, "teacher_outputs_seconds": outputs.seconds,
                    "teacher_outputs_examples": outputs.examples} if outputs else {})}

    def describe_sweep(self) -> str:
        cfg = self.ctx.config
        return (f"Sweep `{cfg.name}`: {cfg.trials} trials of task {self.task.name}, pipeline {cfg.pipeline.label}, sampler "
                f"{cfg.sampler}, searching {', '.join(cfg.searched) or 'nothing'}; the front is over {', '.join(cfg.objectives)}. "
                "Its files: pareto.csv, pareto.html, pareto.png, trials.csv, hypervolume.png, tracking.json.")

    def describe_trial(self, p: Mapping[str, Any]) -> str:
        """One trial's pipeline in words, from its parameters (YAML names)."""
        cfg = self.ctx.config
        shape = {k: v for k, v in p.items() if k not in CORE_PARAMS}  # the task's own: the student's shape
        words = [f"Distil {self.task.describe_student(shape)} from the teacher for {p.get('steps')} steps: loss = soft "
                 f"(temperature {_num(p.get('temperature'))}) + {_num(p.get('lambda'))} x hard + {_num(p.get('beta'))} x hidden, "
                 f"{p.get('optimizer')} at lr {_num(p.get('lr'))}." if cfg.pipeline.distill else "Compress the teacher itself."]
        return " ".join([*words, *cfg.pipeline.describe(p), "Pack the weights and measure the model."])

    # -- tune ---------------------------------------------------------------------------------------
    def tune(self) -> FailureLimit:
        """Every trial left, through Ray Tune, `slots` at a time; the study then settled for the trials that did
        not end (Ctrl-C, SIGTERM or `max_failures`)."""
        ctx, cfg, prep = self.ctx, self.ctx.config, self.prep
        tc = TrialContext(ctx=ctx, task=self.task, data=prep.data, teacher=prep.teacher, teacher_outputs=prep.outputs,
                          sweep_id=self.sweep_id, service=prep.service)
        trainable = tune.with_resources(tune.with_parameters(tune_trial, tc=tc), trial_resources(cfg))
        searcher = make_searcher(ctx, self.files, None if self.fresh_study else self.resume)
        self.recorder.tell = searcher.tell
        limit = FailureLimit(self.recorder, cfg.max_failures)
        name = f"{self.sweep_id}-resumed-{self.stamp}" if self.resume else self.sweep_id
        self.tune_started = time.perf_counter()
        # Validation reports during distillation (and the result of a trial stopped early) hold no objectives, which
        # Tune's strict metric check refuses; the searcher and the recorder handle them. A failed trial's traceback
        # goes to its error.txt and tracked run, not to the console (the progress line has its cause). Tune's new output
        # engine prints its experiment banner at any verbosity; its old one, at verbosity 0, prints nothing.
        # Tune's experiment state (every trial's JSON, kept in memory and written whole every ~10 s) restores a Tune run,
        # which a sweep never does (--resume reads the sweep's own records): written once at the start and the end.
        # Of Tune's own loggers only result.json per trial (TensorBoard's writers outlive their trials in the driver).
        stops = cfg.early_stopping.enabled or cfg.fidelity.enabled
        with environ(TUNE_DISABLE_STRICT_METRIC_CHECKING="1" if stops else None, TUNE_PRINT_ALL_TRIAL_ERRORS="0",
                     RAY_AIR_NEW_OUTPUT=None if self.verbose else "0", TUNE_GLOBAL_CHECKPOINT_S=str(TUNE_STATE_EVERY_S),
                     TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"), _quiet("ray.tune", not self.verbose):
            if self.remaining:
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(search_alg=searcher, num_samples=self.remaining, max_concurrent_trials=self.slots,
                                                reuse_actors=True),  # a trial's driver process (torch imported, teacher files warm) serves the next
                    run_config=tune.RunConfig(name=name, storage_path=ctx.storage.location("tune"),
                                              callbacks=[self.recorder, JsonLoggerCallback(), *([] if self.verbose else [_Unprinted()])],
                                              stop=limit, verbose=1 if self.verbose else 0),
                )
                self._record_late(tuner.fit())
            else:
                log.info("all %d trials of sweep %s have run; finishing it", cfg.trials, self.sweep_id)
        self.tune_stopped = time.perf_counter()
        if searcher.fanned_out:
            self.runs.log({"fanout_trials_queued": searcher.fanned_out})
        if searcher.repeats_skipped:  # configurations proposed again after they completed: answered, not run
            log.info("%d repeated configurations were answered from the study instead of run", searcher.repeats_skipped)
            self.runs.log({"repeats_skipped": searcher.repeats_skipped})
        searcher.tell_all()
        if self.remaining and len(self.recorder.records) - len(self.previous) < self.remaining:
            closed = close_running(searcher._ot_study)
            if closed:
                log.info("Optuna: %d trial(s) stopped before they ended told FAIL (interrupted); --resume runs their "
                         "configurations again", len(closed))
        return limit

    def _record_late(self, results: Any) -> None:
        """Trials whose final result reached Tune while it wound down after Ctrl-C (its callbacks no longer called):
        recorded now, as they ended, so that they count and `--resume` does not run them again."""
        late = 0
        for result in results:
            metrics = result.metrics or {}
            trial_id = metrics.get("trial_id")
            outcome = TrialOutcome.from_result(metrics) if trial_id and trial_id not in self.recorder.records else None
            if outcome is not None:
                self.recorder.record(SimpleNamespace(trial_id=trial_id, config=result.config), outcome.status, outcome, None)
                late += 1
        if late:
            log.info("%d trial(s) that finished as the sweep stopped recorded (they are not run again)", late)

    # -- finish -------------------------------------------------------------------------------------
    def finish(self, *, stop_reason: str) -> SweepResult:
        """After the trials: the front files, the accounting, the front's tags and models, the result."""
        cfg, prep = self.ctx.config, self.prep
        trials = self.recorder.table()
        interrupted = len(trials) - len(self.previous) < self.remaining  # Tune returns early on Ctrl-C instead of raising
        if interrupted:
            why = f"after {cfg.max_failures} failed trials (max_failures)" if stop_reason == "max_failures" else "(interrupted)"
            log.warning("sweep stopped %s with %d of its %d trials ended; the front below covers those", why, len(trials), cfg.trials)
        front_files = write_front_files(trials, self.files.path(), self.ctx.objectives)
        for path in front_files:
            self.ctx.storage.publish(path)
        self.files.publish(STUDY_FILE)
        wall, overhead = self.account(trials)
        result = SweepResult(
            config=cfg, trials=trials, teacher=prep.teacher, run_id=self.runs.parent_id, experiment_id=self.runs.tracker.experiment_id,
            tracking_uri=self.runs.tracker.uri, wall_seconds=wall, overhead=overhead, interrupted=interrupted,
            hypervolume=normalized_hypervolume(trials, prep.reference, self.ctx.objectives), task=self.task,
            stop_reason=stop_reason if interrupted else "", sweep_id=self.sweep_id, objective_set=self.ctx.objectives)
        self.runs.tracker.flush(wait=True)  # the trials' runs delivered before the front's models and tags name them
        pick = result.recommend()
        example = self.task.example(self.task.load_data(fetch(prep.data.path)))  # the models' input example
        models = record_front(self.runs, trials, objectives=self.ctx.objectives, example=example, task=self.task,
                              files=[*front_files, write_hypervolume_plot(self.recorder.hypervolumes, self.files.path())],
                              recommended=None if pick is None else pick["trial_id"], register=cfg.register, out_dir=self.files.path())
        trials["model_uri"] = trials["trial_id"].map(models)
        return dataclasses.replace(result, models=models)

    def account(self, trials: pd.DataFrame) -> tuple[float, float]:
        """(wall seconds, orchestration overhead), logged on the sweep's run with the trial counts.

        Slot time: setup and the teacher phase use one slot; the trial phase `slots` (as many trials as run at
        once), each only while a trial remained that could use it (a slot idle because the search had no trial
        left for it, as in the last trial of a sweep, is `tail_idle_seconds`, not orchestration)."""
        recorder, prep, teacher, outputs = self.recorder, self.prep, self.prep.teacher, self.prep.outputs
        tune_seconds = self.tune_stopped - self.tune_started
        wall = time.perf_counter() - self.started
        ends = recorder.end_times + [self.tune_stopped] * len(recorder.running)  # unfinished (interrupted) trials
        busy = work_slot_seconds(ends, self.tune_started, self.tune_stopped, self.slots)
        this_run = trials.iloc[len(self.previous):]
        stage_seconds = teacher.seconds_now + (outputs.seconds if outputs and not outputs.cache_hit else 0.0) + float(
            this_run["time_stages_s"].fillna(0).sum() if "time_stages_s" in this_run else 0.0)
        overhead = 1 - stage_seconds / (wall - tune_seconds + busy)
        self.runs.log(distillations(trials))
        self.runs.log(fidelity_figures(recorder.rungs, trials, self.ctx.config.distill.steps))
        self.runs.log({
            "trials_completed": int((trials["status"] == "COMPLETED").sum()), "trials_failed": int((trials["status"] == "ERROR").sum()),
            "trials_stopped_early": int((trials["status"] == "STOPPED").sum()), "front_size": int(trials["pareto"].sum()),
            "wall_seconds": wall, "setup_seconds": self.setup_seconds, "teacher_seconds": prep.seconds, "trials_seconds": tune_seconds,
            "stage_seconds": stage_seconds, "orchestration_overhead": overhead, "tail_idle_seconds": tune_seconds * self.slots - busy,
        })
        return wall, overhead


class _Unprinted(TrialProgressCallback):
    """Tune's old output engine's per-trial lines, not printed: in its place it would print "Trial ... completed. Last
    result: ..." for every trial stopped early (`fidelity`, `early_stopping`) at any verbosity, 0 included."""

    def _print(self, msg: str) -> None:
        pass


@contextlib.contextmanager
def _quiet(logger: str, on: bool) -> Iterator[None]:
    """While on: INFO lines of `logger` hidden (Tune's "Wrote the latest version of all result files ..."), and
    Ray's reports of a full disk (the sweep stops and says so in one line: `StorageFull`) and of failed trials (each
    has its own progress line)."""
    target = logging.getLogger(logger)
    before = target.level
    handlers = logging.getLogger("ray").handlers if on else []
    if on:
        target.setLevel(logging.WARNING)
    for handler in handlers:
        handler.addFilter(_shown)
    try:
        yield
    finally:
        target.setLevel(before)
        for handler in handlers:
            handler.removeFilter(_shown)


def _shown(record: logging.LogRecord) -> bool:
    """A log filter: False for a record about a full disk (its message or its exception), or Tune's list of the
    trials that did not complete."""
    message = record.getMessage()
    return not (no_space(message) or message.startswith("Trials did not complete")
                or (record.exc_info is not None and no_space(record.exc_info[1])))


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _device(use_gpu: bool) -> str:
    if not use_gpu:
        return "cpu"
    return f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cuda"


