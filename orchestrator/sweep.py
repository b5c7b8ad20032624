"""A sweep: the only place that builds a Ray Tune `Tuner`.

run(): Ray up -> data, teacher and teacher outputs (cached in storage) -> MLflow parent run ->
Tuner(OptunaSearch) over `trial.tune_trial` -> trials table and Pareto front (written after every trial,
for early stopping) -> MLflow artifacts -> `SweepResult`.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch
from torch import nn

from orchestrator import cache
from orchestrator.config import PARAM_NAMES, ConfigError, ConstraintsConfig, SweepConfig, load_config
from orchestrator.pareto import hypervolume, knee_point, pareto_mask
from orchestrator.space import OBJECTIVES, ObjectiveConstraints
from orchestrator.stages.export import load_artifact, read_manifest
from orchestrator.stopping import write_front
from orchestrator.tasks import LMData, load_data
from orchestrator.tasks.char_lm import build_data
from orchestrator.tasks.corpora import builtin_text, dataset_text, file_text, tokenize
from orchestrator.tracking import reported_metrics, trial_error
from orchestrator.trial import TeacherInfo, TrialContext, build_teacher, build_teacher_outputs

log = logging.getLogger("orchestrator")

# Ray Train settings for every process of a Ray the sweep starts (pass them too when you start your own):
# a faster health-check poll saves ~2 s per trial; worker start-up on a loaded 2-core machine can near the
# 60 s default timeout.
TRIAL_MEMORY_BYTES = 512 * 1024**2  # logical memory each trial's driver reserves in Ray
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "180"}


@dataclass(frozen=True)
class SweepProgress:
    """What the sweep says after each trial ends (the CLI prints it)."""

    done: int  # trials ended, completed or failed
    total: int
    running: int
    failed: int
    front_size: int  # completed trials on the current Pareto front
    hypervolume: float  # of the current front, as a fraction of the reference box (see `normalized_hypervolume`)
    trial_id: str  # the trial that just ended
    status: str  # "COMPLETED", "STOPPED" (early: it could not reach the front) or "ERROR"
    metrics: dict[str, Any]  # its reported metrics (empty when it failed)
    stopped: int = 0  # trials stopped early so far


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: every trial and the front as DataFrames, and the models behind them."""

    config: SweepConfig
    trials: pd.DataFrame  # one row per trial: trial_id, status, run_id, params, metrics, artifact, error, pareto
    teacher: TeacherInfo
    run_id: str  # the MLflow parent run
    experiment_id: str
    tracking_uri: str
    wall_seconds: float
    overhead: float  # share of the sweep's CPU-slot time not spent inside a stage
    interrupted: bool  # stopped (Ctrl-C) before every trial ran
    hypervolume: float  # of the final front, normalized as in `normalized_hypervolume`

    @property
    def pareto(self) -> pd.DataFrame:
        """The completed trials no other trial dominates, smallest first."""
        return self.trials[self.trials["pareto"]].sort_values("size_mb").reset_index(drop=True)

    def recommend(
        self, *, max_size_mb: float | None = None, max_latency_ms: float | None = None, min_accuracy: float | None = None
    ) -> pd.Series | None:
        """The front point to pick: the knee of the front points that meet these limits (on top of the
        sweep's own `constraints`), or None when no front point meets them.

        With no limits that bind, it is the knee of the whole front: the point nearest the ideal once each
        objective is scaled to [0, 1] over the front.
        """
        front = self.pareto
        limits = ObjectiveConstraints(ConstraintsConfig(max_size_mb, max_latency_ms, min_accuracy))
        ok = [limits.feasible(r.accuracy, r.size_mb, r.latency_ms) for r in front.itertuples()]
        candidates = front[pd.Series(ok, index=front.index, dtype=bool)]
        if candidates.empty:
            return None
        return candidates.iloc[knee_point(candidates[list(OBJECTIVES)].to_numpy(dtype=float), list(OBJECTIVES.values()))]

    def load_model(self, trial_id: str) -> nn.Module:
        """Reload a trial's compressed model from its exported artifact (the vocabulary is `model.vocab`)."""
        return load_model(self._artifact(trial_id))

    def _artifact(self, trial_id: str) -> str:
        rows = self.trials[self.trials["trial_id"] == trial_id]
        if rows.empty or not isinstance(rows.iloc[0]["artifact"], str):
            raise KeyError(f"no completed trial {trial_id!r} in this sweep; known: {list(self.trials['trial_id'])}")
        return rows.iloc[0]["artifact"]

    def export_pretrained(self, trial_id: str, directory: str | os.PathLike[str]) -> Path:
        """Write a trial's hf_causal_lm model as a `save_pretrained` directory (see `export_pretrained`)."""
        return export_pretrained(self._artifact(trial_id), directory)


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild a compressed model from an exported artifact (`model.orc`). `model.vocab` holds a char_lm
    model's vocabulary; `model.tokenizer` an hf_causal_lm model's tokenizer, or None."""
    model, meta = load_artifact(path)
    model.vocab = meta.get("vocab")
    model.tokenizer = None
    if meta.get("tokenizer"):
        from orchestrator.tasks.hf_lm import load_tokenizer

        model.tokenizer = load_tokenizer(meta["tokenizer"])
    return model


def export_pretrained(artifact: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Write an hf_causal_lm artifact as a directory `transformers.AutoModelForCausalLM.from_pretrained`
    loads, with its tokenizer: float, float16 and pruned models. Weights quantized to 2..8 bits have no
    transformers form: keep the packed artifact and `load_model` it."""
    from orchestrator.tasks.hf_lm import HFCausalLM, save_pretrained

    manifest = read_manifest(artifact)
    low_bit = sorted({e["bits"] for e in manifest["tensors"] if e.get("encoding") == "quant"})
    if manifest["architecture"] != "hf_causal_lm":
        raise ValueError(f"{artifact}: a {manifest['architecture']} model, not a Hugging Face one; use load_model")
    if low_bit:
        raise ValueError(f"{artifact}: weights quantized to {low_bit} bits have no transformers form; "
                         "use the packed artifact with orchestrator.load_model")
    model = load_model(artifact)
    assert isinstance(model, HFCausalLM)
    save_pretrained(model, model.tokenizer, directory)
    return Path(directory)


class Sweep:
    """A multi-objective compression sweep over a validated `SweepConfig`.

    Example (the search space's own defaults, two trials):
        >>> sweep = Sweep.from_yaml("search_spaces/smoke.yaml", trials=2)
        >>> sweep.config.trials
        2
    """

    def __init__(self, config: SweepConfig) -> None:
        self.config = config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> "Sweep":
        """Load and validate a search space; overrides are keys (``trials=4``), dotted keys
        (``**{"distill.steps": 50}``) or nested dicts (``distill={"steps": 50}``)."""
        return cls(load_config(path, overrides=overrides))

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
        previous = self.check_resume(resume) if resume is not None else None
        started = time.perf_counter()
        threading.Thread(target=_import_later_modules, name="orchestrator-imports", daemon=True).start()
        own_ray = not ray.is_initialized()
        if own_ray:
            for k, v in RAY_ENV.items():
                os.environ.setdefault(k, v)
            ray.init(
                address=cfg.address,
                num_cpus=cfg.resources.local_cpus if cfg.address is None else None,
                include_dashboard=False,
                log_to_driver=ray_logs,
                runtime_env={"env_vars": RAY_ENV},
            )
        try:
            return _run(cfg, started, progress, resume=resume, previous=previous)
        finally:
            if own_ray:
                ray.shutdown()


    def check_resume(self, sweep_id: str) -> list[dict[str, Any]]:
        """The trials of sweep `sweep_id` in this storage; `ConfigError` unless it can be resumed with this
        config (same searched params and pipeline, so that its Optuna study and its trials fit)."""
        cfg = self.config
        root = cfg.storage_path / "sweeps"
        sweep_dir = root / sweep_id
        if not (sweep_dir / "optuna.db").is_file() or not (sweep_dir / CONFIG_FILE).is_file():
            known = sorted(p.name for p in root.iterdir() if (p / "optuna.db").is_file()) if root.is_dir() else []
            raise ConfigError(
                f"--resume {sweep_id}: no resumable sweep of that id under {root}; "
                f"sweep ids there: {', '.join(known[-5:]) or 'none'} (give --storage of the original sweep)"
            )
        earlier = load_config(sweep_dir / CONFIG_FILE)
        if earlier.pipeline != cfg.pipeline:
            raise ConfigError(
                f"--resume {sweep_id}: `pipeline` is {cfg.pipeline.to_raw()} here but {earlier.pipeline.to_raw()} in that "
                "sweep; resume with the pipeline it started with"
            )
        before = earlier.to_dict()["params"]
        now = cfg.to_dict()["params"]
        for name in now:
            if before.get(name) != now[name]:
                raise ConfigError(
                    f"--resume {sweep_id}: `params.{name}` is {now[name]!r} here but {before.get(name)!r} in that sweep; "
                    "resume with the search space it started with"
                )
        rows_file = sweep_dir / TRIALS_FILE
        if not rows_file.is_file():
            return []
        return [json.loads(line) for line in rows_file.read_text().splitlines() if line.strip()]


CONFIG_FILE = "config.yaml"  # the sweep's config, as run (a resumed sweep must match its params)
TRIALS_FILE = "trials.jsonl"  # one line per ended trial: what the trials table holds


def _import_later_modules() -> None:
    """Import what the sweep needs only later (MLflow's SQL store, the plotting libraries: seconds of
    imports) while this process waits on Ray's start-up and the teacher, not after."""
    import matplotlib

    matplotlib.use("Agg")
    for name in ("matplotlib.pyplot", "plotly.express", "mlflow.store.tracking.sqlalchemy_store"):
        importlib.import_module(name)


def task_text(cfg: SweepConfig) -> str:
    """The task's text: a Hugging Face dataset, local files, or a built-in corpus (first `chars` characters)."""
    task = cfg.task
    if task.dataset is not None:
        text = dataset_text(task.dataset, task.dataset_config, task.dataset_split, task.text_column)
    elif task.files is not None:
        text = file_text(sorted(glob.glob(os.path.expanduser(task.files), recursive=True)), task.text_column)
    else:
        text = builtin_text(task.corpus)
    return text[: task.chars] if task.chars is not None else text


def _prepare_data(cfg: SweepConfig) -> tuple[LMData, str, str]:
    """The task's corpus, encoded once and stored under a hash of the text (and the tokenizer's vocabulary)."""
    text = task_text(cfg)
    text_key = hashlib.sha256(text.encode()).hexdigest()[:16]
    if cfg.task.name == "hf_causal_lm":
        from orchestrator.tasks.hf_lm import load_tokenizer, tokenizer_source

        ref = tokenizer_source(cfg.teacher.model)
        tokenizer = load_tokenizer(ref)
        vocab = sorted(tokenizer.get_vocab().items())
        key = cache.content_key("tokens", text_key, vocab)
        vocab_size = max(len(tokenizer), max(i for _, i in vocab) + 1)

        def build(d: Path) -> None:
            tokenize(text, tokenizer, vocab_size=vocab_size, meta={"tokenizer": ref}).save(d / "data.pt")
    else:
        key = text_key

        def build(d: Path) -> None:
            build_data(text).save(d / "data.pt")

    entry, _ = cache.get_or_build(cfg.storage_path / "data", key, build)
    return load_data(entry / "data.pt"), str(entry / "data.pt"), key


def _run(
    cfg: SweepConfig, started: float, progress: Callable[[SweepProgress], None] | None, *, resume: str | None,
    previous: list[dict[str, Any]] | None,
) -> SweepResult:
    import optuna
    from ray import tune

    from orchestrator.plots import write_front_files
    from orchestrator.space import DefineByRun, make_sampler
    from orchestrator.tracking import SweepTracker, TrialRunsCallback
    from orchestrator.trial import tune_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial INFO lines would drown the progress
    storage = cfg.storage_path
    stamp = time.strftime("%Y%m%d-%H%M%S")
    sweep_id = resume or f"{cfg.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    sweep_dir = storage / "sweeps" / sweep_id
    previous = previous or []

    data, data_path, data_key = _prepare_data(cfg)
    setup_seconds = time.perf_counter() - started
    t = time.perf_counter()
    if cfg.teacher.model is not None:
        log.info("teacher: pretrained %s ...", cfg.teacher.model)
    else:
        log.info("teacher: %d layers x %d wide, %d steps ...", cfg.teacher.layers, cfg.teacher.width, cfg.teacher.steps)
    teacher = build_teacher(cfg, data, data_path, data_key)
    log.info(
        "teacher %s (%s): test accuracy %.4f, %.3f MB, %.3f ms",
        teacher.key, "cache hit, reused" if teacher.cache_hit else "built now", teacher.accuracy,
        teacher.size_bytes / 1e6, teacher.latency_ms,
    )

    outputs = None
    if cfg.distill.teacher_outputs == "cached":
        outputs = build_teacher_outputs(cfg, teacher, data)
        log.info(
            "teacher outputs %s (%s): %d windows, %.1f MB, %.1f s of teacher time%s",
            outputs.key, "cache hit, reused" if outputs.cache_hit else "computed now", cfg.distill.cache_blocks,
            outputs.size_bytes / 1e6, outputs.seconds, " (saved)" if outputs.cache_hit else "",
        )
    teacher_seconds = time.perf_counter() - t

    tracker = SweepTracker(cfg.resolved_tracking_uri, cfg.experiment or cfg.name)
    parent = tracker.start(
        run_name=sweep_id,
        params=cfg.to_dict(),
        tags={"sweep_id": sweep_id, "teacher_key": teacher.key, "teacher_cache_hit": str(teacher.cache_hit).lower(),
              "storage": str(storage), "pipeline": cfg.pipeline.label, **({"resumed": "true", "previous_trials": str(len(previous))} if resume else {}),
              **({"teacher_outputs_key": outputs.key, "teacher_outputs_cache_hit": str(outputs.cache_hit).lower()}
                 if outputs else {})},
    )
    tracker.log_metrics(parent, {
        "teacher_accuracy": teacher.accuracy, "teacher_perplexity": teacher.perplexity,
        "teacher_size_mb": teacher.size_bytes / 1e6, "teacher_latency_ms": teacher.latency_ms,
        "teacher_params": teacher.params,
        **dict(zip(("hypervolume_ref_accuracy", "hypervolume_ref_size_mb", "hypervolume_ref_latency_ms"),
                   reference_point(cfg, teacher))),
        **({"teacher_outputs_mb": outputs.size_bytes / 1e6, "teacher_outputs_seconds": outputs.seconds} if outputs else {}),
    })
    monitor = _Monitor(
        cfg.trials, progress, reference=reference_point(cfg, teacher), constraints=cfg.constraints,
        front_dir=str(sweep_dir), run_ids=tracker.child_ids, previous=previous,
        log_hypervolume=lambda hv, n: tracker.log_metrics(parent, {"hypervolume": hv}, step=n),
    )
    status = "FAILED"
    try:
        study_url = f"sqlite:///{sweep_dir / 'optuna.db'}"
        sampler_seed = cfg.seed if cfg.sampler_seed is None else cfg.sampler_seed
        if resume:  # a sampler's random state is not stored: a fresh stream, or it would redo the first trials
            sampler_seed += len(optuna.load_study(study_name=sweep_id, storage=study_url).trials)
        else:
            sweep_dir.mkdir(parents=True)
            (sweep_dir / CONFIG_FILE).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        # The study lives next to the sweep, so Optuna's own tools can read it (and a later sweep resume it):
        # optuna.load_study(study_name=<sweep id>, storage="sqlite:///<sweep dir>/optuna.db")
        searcher = _ConstrainedOptunaSearch(
            space=DefineByRun(cfg.params),
            metric=list(OBJECTIVES),
            mode=list(OBJECTIVES.values()),
            sampler=make_sampler(cfg.sampler, seed=sampler_seed, params=cfg.params,
                                 population_size=cfg.population_size, options=cfg.sampler_options),
            limits=ObjectiveConstraints(cfg.constraints),
            storage=optuna.storages.RDBStorage(study_url),
            study_name=sweep_id,
            points_to_evaluate=None if resume else [dict(p) for p in cfg.initial_points] or None,
        )
        ctx = TrialContext(config=cfg, data_path=data_path, teacher=teacher, teacher_outputs=outputs,
                           sweep_dir=str(sweep_dir))
        trainable = tune.with_resources(tune.with_parameters(tune_trial, ctx=ctx), trial_resources(cfg))
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=cfg.trials, max_concurrent_trials=cfg.max_concurrent_trials,
                reuse_actors=True,  # a trial's driver process (torch imported, teacher files warm) serves the next
            ),
            run_config=tune.RunConfig(
                name=f"{sweep_id}-resumed-{stamp}" if resume else sweep_id,
                storage_path=str(storage / "tune"),
                callbacks=[TrialRunsCallback(tracker, tags={"pipeline": cfg.pipeline.label}), monitor],
                verbose=0,
            ),
        )
        tune_started = time.perf_counter()
        # Validation reports during distillation (and the result of a trial stopped early) hold no objectives,
        # which Tune's strict metric check refuses; the searcher and the monitor handle them.
        with _environ(TUNE_DISABLE_STRICT_METRIC_CHECKING="1" if cfg.early_stopping.enabled else None):
            tuner.fit()
        tune_stopped = time.perf_counter()
        tune_seconds = tune_stopped - tune_started
        trials = monitor.table()
        ran = len(trials) - len(previous)
        interrupted = ran < cfg.trials  # Tune returns early on Ctrl-C instead of raising
        if interrupted:
            log.warning("sweep interrupted after %d of %d trials; the front below covers those", ran, cfg.trials)

        for run_id in trials.loc[trials["pareto"], "run_id"]:
            tracker.set_tags(run_id, {"pareto": "true"})
        for run_id in trials.loc[(trials["status"] == "COMPLETED") & ~trials["feasible"], "run_id"]:
            tracker.set_tags(run_id, {"feasible": "false"})
        for path in write_front_files(trials, sweep_dir):
            tracker.log_artifact(parent, path)
        wall = time.perf_counter() - started
        # Slot time: setup and the teacher phase use one slot; the trial phase up to `max_concurrent_trials`,
        # each only while a trial remained that could use it (a slot idle because the search had no trial
        # left for it, as in the last trial of a sweep, is `tail_idle_seconds`, not orchestration).
        slots = min(cfg.max_concurrent_trials, cfg.trials)
        ends = monitor.end_times + [tune_stopped] * len(monitor.running)  # unfinished (interrupted) trials
        busy = work_slot_seconds(ends, tune_started, tune_stopped, slots)
        capacity = wall - tune_seconds + busy
        stage_seconds = (0.0 if teacher.cache_hit else teacher.build_seconds) + (
            outputs.seconds if outputs and not outputs.cache_hit else 0.0
        ) + float(
            trials.iloc[len(previous):].get("time_stages_s", pd.Series(dtype=float)).fillna(0).sum()
        )
        overhead = 1 - stage_seconds / capacity
        tracker.log_metrics(parent, {
            "trials_completed": int((trials["status"] == "COMPLETED").sum()),
            "trials_failed": int((trials["status"] == "ERROR").sum()),
            "trials_stopped_early": int((trials["status"] == "STOPPED").sum()),
            "front_size": int(trials["pareto"].sum()),
            "wall_seconds": wall,
            "setup_seconds": setup_seconds,
            "teacher_seconds": teacher_seconds,
            "trials_seconds": tune_seconds,
            "stage_seconds": stage_seconds,
            "orchestration_overhead": overhead,
            "tail_idle_seconds": tune_seconds * slots - busy,
        })
        status = "KILLED" if interrupted else "FINISHED"
        result = SweepResult(
            config=cfg, trials=trials, teacher=teacher, run_id=parent, experiment_id=tracker.experiment_id,
            tracking_uri=cfg.resolved_tracking_uri, wall_seconds=wall, overhead=overhead, interrupted=interrupted,
            hypervolume=normalized_hypervolume(trials, reference_point(cfg, teacher)),
        )
        pick = result.recommend()
        if pick is not None:
            tracker.set_tags(pick["run_id"], {"recommended": "true"})
            tracker.set_tags(parent, {"recommended_trial": pick["trial_id"]})
        return result
    finally:
        tracker.end_sweep(status)


@contextlib.contextmanager
def _environ(**values: str | None) -> Iterator[None]:
    """Set environment variables (None: leave as is) for the duration, then restore them."""
    before = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def trial_resources(cfg: SweepConfig) -> dict[str, float]:
    """What one trial's driver reserves in Ray.

    It always reserves memory (it loads models). When distillation runs in the trial's own process it holds
    that worker's CPUs (and GPU); when it only waits on a Ray Train worker group it holds `trial_cpus`,
    0 by default, so that two trials on a 2-CPU machine can each hold a 1-CPU worker instead of queueing
    behind each other's driver.
    """
    r = cfg.resources
    if not cfg.distill_in_trial:
        return {"cpu": r.trial_cpus, "memory": TRIAL_MEMORY_BYTES}
    return {"cpu": max(r.trial_cpus, r.cpus_per_worker), "gpu": 1 if r.use_gpu else 0, "memory": TRIAL_MEMORY_BYTES}


def front_of(trials: pd.DataFrame) -> pd.Series:
    """Boolean Series: feasible completed trials that no other feasible completed trial dominates."""
    done = trials["feasible"].to_numpy(dtype=bool)  # feasible implies completed
    mask = np.zeros(len(trials), dtype=bool)
    if done.any():
        values = trials.loc[done, list(OBJECTIVES)].to_numpy(dtype=float)
        mask[done] = pareto_mask(values, list(OBJECTIVES.values()))
    return pd.Series(mask, index=trials.index)


def reference_point(cfg: SweepConfig, teacher: TeacherInfo) -> tuple[float, float, float]:
    """(accuracy, size_mb, latency_ms) the hypervolume is measured from: `reference_point` in the config,
    the teacher's size and latency where it leaves them null."""
    r = cfg.reference_point
    return (r.accuracy, r.size_mb or teacher.size_bytes / 1e6, r.latency_ms or teacher.latency_ms)


def normalized_hypervolume(trials: pd.DataFrame, reference: tuple[float, float, float]) -> float:
    """Hypervolume of the feasible completed trials from `reference` (accuracy, size, latency), divided by
    the box accuracy in [ref, 1] x size in [0, ref] x latency in [0, ref]: 0 when nothing beats the
    reference on all three, 1 is unreachable."""
    done = trials[trials["feasible"]]
    accuracy, size_mb, latency = reference
    volume = hypervolume(done[list(OBJECTIVES)].to_numpy(dtype=float), list(OBJECTIVES.values()), list(reference))
    return volume / ((1 - accuracy) * size_mb * latency)


class _ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that records a finished trial's constraint values on its Optuna trial
    (`Trial.set_constraint`, read by TPE and NSGA-II) just before telling the study, and tells a trial that
    stopped early as PRUNED (Ray's OptunaSearch would tell it COMPLETE with no values, which Optuna refuses)."""

    def __init__(self, *args: Any, limits: ObjectiveConstraints, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self._ot_trials.get(trial_id)
        if result and ot_trial is not None and all(m in result for m in self.metric):
            for name, value in self._limits.violations(*(float(result[m]) for m in self.metric)).items():
                ot_trial.set_constraint(name, value)
        elif result and result.get("early_stopped"):
            result = None  # no objective values: PRUNED
        super().on_trial_complete(trial_id, result, error)


class _Monitor(Callback):
    """Tune callback: records every trial's config, metrics and outcome (COMPLETED, STOPPED early or
    ERROR), logs the front's hypervolume to the parent run after each trial, writes the front where
    trials that stop early read it (`front_dir`), and reports progress."""

    def __init__(
        self, total: int, progress: Callable[[SweepProgress], None] | None, *, reference: tuple[float, float, float],
        constraints: ConstraintsConfig, log_hypervolume: Callable[[float, int], None], front_dir: str | None = None,
        run_ids: dict[str, str] | None = None, previous: list[dict[str, Any]] | None = None,
    ) -> None:
        """`front_dir` also gets `trials.jsonl`; `run_ids` maps trial ids to MLflow runs as they start;
        `previous` are the rows of the sweep being resumed."""
        self.front_dir = front_dir
        self.run_ids = run_ids if run_ids is not None else {}
        self.total = total
        self.constraints = ObjectiveConstraints(constraints)
        self.progress = progress
        self.reference = reference
        self.log_hypervolume = log_hypervolume
        self.rows: dict[str, dict[str, Any]] = {row["trial_id"]: row for row in previous or []}
        self.total += len(self.rows)
        self.running: set[str] = set()
        self.end_times: list[float] = []  # perf_counter() when each trial ended

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if result.get("early_stopped"):
            self._ended(trial, "STOPPED", result, None)
        elif all(m in result for m in OBJECTIVES):
            self._ended(trial, "COMPLETED", result, None)
        else:  # cannot happen unless the trial function changes; never let it pass as a finished trial
            self._ended(trial, "ERROR", result, f"the trial ended without reporting {', '.join(OBJECTIVES)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._ended(trial, "ERROR", {}, trial_error(trial)[0])

    def _ended(self, trial: Any, status: str, result: dict[str, Any], error: str | None) -> None:
        self.running.discard(trial.trial_id)
        self.end_times.append(time.perf_counter())
        metrics = reported_metrics(result)
        params = {name: trial.config.get(name) for name in PARAM_NAMES}
        row = {"trial_id": trial.trial_id, "status": status, "run_id": self.run_ids.get(trial.trial_id), **params,
               **metrics, "error": error}
        self.rows[trial.trial_id] = row
        table = self.table()
        if self.front_dir is not None:
            write_front(self.front_dir, table.loc[table["pareto"], list(OBJECTIVES)].to_numpy(dtype=float))
            with open(Path(self.front_dir) / TRIALS_FILE, "a") as f:
                f.write(json.dumps(row, default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n")
        hv = normalized_hypervolume(table, self.reference)
        self.log_hypervolume(hv, len(self.rows))
        if self.progress is not None:
            self.progress(SweepProgress(
                done=len(self.rows), total=self.total, running=len(self.running),
                failed=int((table["status"] == "ERROR").sum()), front_size=int(table["pareto"].sum()),
                hypervolume=hv, trial_id=trial.trial_id, status=status, metrics=metrics,
                stopped=int((table["status"] == "STOPPED").sum()),
            ))

    def table(self) -> pd.DataFrame:
        trials = pd.DataFrame(list(self.rows.values()))
        if trials.empty:
            trials = pd.DataFrame(columns=["trial_id", "status", "run_id", *PARAM_NAMES, *OBJECTIVES, "artifact", "error"])
        for column in (*OBJECTIVES, "artifact"):
            if column not in trials:
                trials[column] = np.nan if column != "artifact" else None
        done = trials["status"] == "COMPLETED"
        trials["feasible"] = pd.Series([
            bool(d) and self.constraints.feasible(a, s, l)
            for d, a, s, l in zip(done, trials["accuracy"], trials["size_mb"], trials["latency_ms"])
        ], index=trials.index, dtype=bool)
        trials["pareto"] = front_of(trials)
        return trials


__all__ = ["Sweep", "SweepResult", "SweepProgress", "load_model", "front_of", "normalized_hypervolume", "reference_point"]
