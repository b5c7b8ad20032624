"""What a sweep gives back: its trials and front as DataFrames (`SweepResult`), the progress it reports
(`SweepProgress`), the front and hypervolume computed from a trials table, and the models behind them."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from orchestrator import models
from orchestrator.config import ConstraintsConfig, SweepConfig
from orchestrator.outcome import TrialOutcome
from orchestrator.pareto import hypervolume, knee_point, pareto_mask
from orchestrator.space import OBJECTIVES, ObjectiveConstraints
from orchestrator.stages.export import load_artifact, read_manifest
from orchestrator.tasks.base import Task
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
    task: Task | None = None  # the sweep's task: rebuilds models of a task of your own

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
        return load_model(self._artifact(trial_id), task=self.task)

    def _artifact(self, trial_id: str) -> str:
        rows = self.trials[self.trials["trial_id"] == trial_id]
        if rows.empty or not isinstance(rows.iloc[0]["artifact"], str):
            raise KeyError(f"no completed trial {trial_id!r} in this sweep; known: {list(self.trials['trial_id'])}")
        return rows.iloc[0]["artifact"]

    def export_pretrained(self, trial_id: str, directory: str | os.PathLike[str]) -> Path:
        """Write a trial's hf_causal_lm model as a `save_pretrained` directory (see `export_pretrained`)."""
        return export_pretrained(self._artifact(trial_id), directory)


def load_model(path: str | os.PathLike[str], *, task: Task | None = None) -> nn.Module:
    """Rebuild a compressed model from an exported artifact (`model.orc`). `model.vocab` holds a char_lm
    model's vocabulary; `model.tokenizer` an hf_causal_lm model's tokenizer, or None. A model of a task of
    your own (task python) is rebuilt by that task: pass it as `task`; its weights come from the artifact
    and no code named in the artifact is imported."""
    manifest = read_manifest(path)
    if task is None and manifest["architecture"] not in models.ARCHITECTURES:
        raise ValueError(f"{path}: a model of a task of your own ({manifest['architecture']!r}); "
                         "rebuild it with load_model(path, task=<that task>)")
    model, meta = load_artifact(path, task.build_model if task is not None else models.build)
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
    from orchestrator.models.hf import HFCausalLM
    from orchestrator.tasks.hf_lm import save_pretrained

    manifest = read_manifest(artifact)
    low_bit = sorted({e["bits"] for e in manifest["tensors"] if e.get("encoding") == "quant"})
    if manifest["architecture"] != HFCausalLM.architecture:
        raise ValueError(f"{artifact}: a {manifest['architecture']} model, not a Hugging Face one; use load_model")
    if low_bit:
        raise ValueError(f"{artifact}: weights quantized to {low_bit} bits have no transformers form; "
                         "use the packed artifact with orchestrator.load_model")
    model = load_model(artifact)
    save_pretrained(model, model.tokenizer, directory)
    return Path(directory)


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


