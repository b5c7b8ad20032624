"""What a sweep gives back: its trials and front as DataFrames (`SweepResult`), the progress it reports
(`SweepProgress`), the front and hypervolume computed from a trials table, and the models behind them."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from orchestrator import models
from orchestrator.config import ConfigError, ConstraintsConfig, SweepConfig
from orchestrator.outcome import TrialOutcome
from orchestrator.pareto import hypervolume, knee_point, pareto_mask
from orchestrator.objectives import OBJECTIVES, directions, scale
from orchestrator.space import ObjectiveConstraints
from orchestrator.stages.export import load_artifact, read_manifest
from orchestrator.tasks.base import Task
from orchestrator.storage import fetch
from orchestrator.teacher import TeacherInfo


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
    outcome: TrialOutcome | None  # what it reported (None when it failed)
    stopped: int = 0  # trials stopped early so far
    objectives: tuple[str, ...] = ()  # the sweep's objectives
    run_name: str = ""  # the trial's MLflow run (trial-0001, ...)
    error: str = ""  # a failed trial's cause, one line (its traceback: `error_file` and its MLflow run)
    error_file: str = ""


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
    interrupted: bool  # stopped before every trial ran (Ctrl-C, SIGTERM or `max_failures`)
    hypervolume: float  # of the final front, normalized as in `normalized_hypervolume`
    task: Task | None = None  # the sweep's task: rebuilds models of a task of your own
    models: Mapping[str, str] = dataclasses.field(default_factory=dict)  # trial id -> MLflow model URI (front points)
    sweep_id: str = ""  # its id (the parent run's name): `--resume` takes it
    stop_reason: str = ""  # why it stopped early: "interrupted" or "max_failures" ("" when every trial ran)

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives the front is over."""
        return self.config.objectives

    @property
    def pareto(self) -> pd.DataFrame:
        """The completed trials no other trial dominates, sorted by the sweep's first measured cost (size by
        default), best first."""
        costs = [n for n in self.objectives if OBJECTIVES[n].where != "held_out"] or list(self.objectives)
        return self.trials[self.trials["pareto"]].sort_values(
            costs[0], ascending=OBJECTIVES[costs[0]].direction == "min").reset_index(drop=True)

    def recommend(self, **limits: float | None) -> pd.Series | None:
        """The front point to pick: the knee of the front points that meet `limits` (`max_<objective>` /
        `min_<objective>`, as in `constraints`, on top of the sweep's own), or None when none meets them.

        With no limits that bind, it is the knee of the whole front: the point nearest the ideal once each
        objective is scaled to [0, 1] over the front.

        Example: ``result.recommend(max_size_mb=1.0, min_accuracy=0.4)``.
        """
        front = self.pareto
        check = ObjectiveConstraints(ConstraintsConfig(**limits))
        missing = [name for name in check.names if name not in front.columns]
        if missing:
            raise KeyError(f"recommend: this sweep did not measure {missing[0]}; limit what it measured: {', '.join(self.objectives)}")
        ok = [check.feasible(row) for _, row in front.iterrows()]
        candidates = front[pd.Series(ok, index=front.index, dtype=bool)]
        if candidates.empty:
            return None
        names = list(self.objectives)
        return candidates.iloc[knee_point(candidates[names].to_numpy(dtype=float), directions(names))]

    def load_model(self, trial_id: str, *, tokenizer: bool = False) -> nn.Module:
        """Reload a trial's compressed model from its exported artifact (the vocabulary is `model.vocab`;
        an hf_causal_lm model's tokenizer, read from its source, with `tokenizer=True`)."""
        return load_model(self._artifact(trial_id), task=self.task, tokenizer=tokenizer)

    def _artifact(self, trial_id: str) -> str:
        rows = self.trials[self.trials["trial_id"] == trial_id]
        if rows.empty or not isinstance(rows.iloc[0]["artifact"], str):
            raise KeyError(f"no completed trial {trial_id!r} in this sweep; known: {list(self.trials['trial_id'])}")
        return rows.iloc[0]["artifact"]

    def export_pretrained(self, trial_id: str, directory: str | os.PathLike[str]) -> Path:
        """Write a trial's hf_causal_lm model as a `save_pretrained` directory (see `export_pretrained`)."""
        return export_pretrained(self._artifact(trial_id), directory)


def load_model(path: str | os.PathLike[str], *, task: Task | None = None, tracking_uri: str | None = None,
               tokenizer: bool = False) -> nn.Module:
    """Rebuild a compressed model from an exported artifact (`model.orc`: a path, or its location in a URI
    storage, downloaded once to this node's cache), or from an MLflow model a sweep logged
    (``runs:/<run>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``, read from
    `tracking_uri`, default $MLFLOW_TRACKING_URI). `model.vocab` holds a char_lm
    model's vocabulary. An hf_causal_lm model names where its tokenizer came from (`model.tokenizer_source`,
    a hub id or a directory); nothing named inside an artifact is read unless you ask: with `tokenizer=True`
    `model.tokenizer` is loaded from there, else it is None. A model of a task of
    your own (task python) is rebuilt by that task: pass it as `task`; its weights come from the artifact
    and no code named in the artifact is imported."""
    if str(path).startswith(("runs:/", "models:/")):
        import tempfile

        from orchestrator.tracking.models import download_model
        from orchestrator.tracking.pyfunc import ARTIFACT_FILE

        with tempfile.TemporaryDirectory(prefix="orchestrator-model-") as tmp:  # read, then removed
            return load_model(download_model(str(path), tracking_uri, into=tmp) / ARTIFACT_FILE, task=task, tokenizer=tokenizer)
    path = fetch(path)
    manifest = read_manifest(path)
    if task is None and manifest["architecture"] not in models.ARCHITECTURES:
        raise ValueError(f"{path}: a model of a task of your own ({manifest['architecture']!r}); "
                         "rebuild it with load_model(path, task=<that task>)")
    model, meta = load_artifact(path, task.build_model if task is not None else models.build)
    model.vocab = meta.get("vocab")
    model.tokenizer, model.tokenizer_source = None, meta.get("tokenizer")
    if tokenizer and meta.get("tokenizer"):  # asked for: read from where the artifact says it came from
        from orchestrator.tasks.hf_lm import load_tokenizer

        model.tokenizer = load_tokenizer(meta["tokenizer"])
    return model


def export_pretrained(artifact: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Write an hf_causal_lm artifact as a directory `transformers.AutoModelForCausalLM.from_pretrained`
    loads, with its tokenizer: float, float16 and pruned models. Weights quantized to 2..8 bits have no
    transformers form: keep the packed artifact and `load_model` it."""
    from orchestrator.models.hf import HFCausalLM
    from orchestrator.tasks.hf_lm import save_pretrained

    manifest = read_manifest(fetch(artifact))
    low_bit = sorted({e["bits"] for e in manifest["tensors"] if e.get("encoding") == "quant"})
    if manifest["architecture"] != HFCausalLM.architecture:
        raise ValueError(f"{artifact}: a {manifest['architecture']} model, not a Hugging Face one; use load_model")
    if low_bit:
        raise ValueError(f"{artifact}: weights quantized to {low_bit} bits have no transformers form; "
                         "use the packed artifact with orchestrator.load_model")
    model = load_model(artifact, tokenizer=True)  # the directory holds it: reading it is what was asked
    save_pretrained(model, model.tokenizer, directory)
    return Path(directory)


def front_of(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """Boolean Series: feasible completed trials that no other feasible completed trial dominates in
    `objectives`."""
    done = trials["feasible"].to_numpy(dtype=bool)  # feasible implies completed
    mask = np.zeros(len(trials), dtype=bool)
    if done.any():
        values = trials.loc[done, list(objectives)].to_numpy(dtype=float)
        mask[done] = pareto_mask(values, directions(objectives))
    return pd.Series(mask, index=trials.index)


def reference_point(cfg: SweepConfig, teacher: TeacherInfo) -> dict[str, float]:
    """The point, one value per objective of `cfg`, the hypervolume is measured from: `reference_point` in
    the config, each objective's default (from the teacher's measurements) where it gives none."""
    given = cfg.reference_point.values
    point = {}
    for name in cfg.objectives:
        point[name] = given[name] if name in given else float(OBJECTIVES[name].reference(teacher.metrics))
        if not scale(name, point[name]) > 0:
            raise ConfigError(f"{cfg.source}: the hypervolume's reference point for {name} is {point[name]:g}, its best possible "
                              f"value, so no trial could count; set `reference_point.{name}` to a worse value")
    return point


def normalized_hypervolume(trials: pd.DataFrame, reference: Mapping[str, float]) -> float:
    """Hypervolume of the feasible completed trials from `reference` (objective -> value), divided by the
    box from the reference to each objective's ideal (accuracy 1, perplexity 1, size, latency and memory
    0; a speed, unbounded, counts in multiples of its reference): 0 when nothing beats the reference in
    every objective, 1 is unreachable."""
    names = list(reference)
    done = trials[trials["feasible"]]
    volume = hypervolume(done[names].to_numpy(dtype=float), directions(names), [reference[n] for n in names])
    return volume / math.prod(scale(name, reference[name]) for name in names)


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


