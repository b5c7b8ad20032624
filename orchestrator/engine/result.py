"""What a sweep gives back: its trials and front as DataFrames (`SweepResult`), the progress it reports after
each trial (`SweepProgress`), and the trials table built from the sweep's records."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from orchestrator.config.schema import ConstraintsConfig, SweepConfig
from orchestrator.core.fronts import front_of
from orchestrator.core.objectives import Objectives
from orchestrator.core.pareto import knee_point
from orchestrator.core.space import ObjectiveConstraints
from orchestrator.io.records import RungRecord, TeacherRecord, TrialOutcome, TrialRecord
from orchestrator.tasks.base import Task
from orchestrator.tasks.reload import export_pretrained, load_packed


@dataclass(frozen=True)
class SweepProgress:
    """What the sweep says after each trial ends (the CLI prints it)."""

    done: int  # trials ended, completed or failed
    total: int
    running: int
    failed: int
    front_size: int  # completed trials on the current Pareto front
    hypervolume: float  # of the current front, as a fraction of the reference box (`core.fronts.normalized_hypervolume`)
    trial_id: str  # the trial that just ended
    status: str  # "COMPLETED", "STOPPED" (early: it could not reach the front) or "ERROR"
    outcome: TrialOutcome | None  # what it reported (None when it failed)
    stopped: int = 0  # trials stopped early so far
    objectives: tuple[str, ...] = ()  # the sweep's objectives
    run_name: str = ""  # the trial's run (trial-0001, ...)
    error: str = ""  # a failed trial's cause, one line (its traceback: `error_file` and its run)
    error_file: str = ""


def trials_table(records: Sequence[TrialRecord], objectives: Objectives, constraints: ObjectiveConstraints,
                 param_names: Sequence[str] = ()) -> pd.DataFrame:
    """One row per trial (`TrialRecord.row`), with `feasible` (completed and within the constraints) and
    `pareto` (on the front of the feasible ones) columns."""
    trials = pd.DataFrame([r.row() for r in records])
    names = list(objectives.names)
    if trials.empty:
        trials = pd.DataFrame(columns=["trial_id", "run_name", "status", "run_id", *param_names, *names, "artifact", "error"])
    for column in (*names, *constraints.names, "artifact"):  # the table's own figures
        if column not in trials:
            trials[column] = np.nan if column != "artifact" else None
    done = trials["status"] == "COMPLETED"
    trials["feasible"] = pd.Series([bool(d) and constraints.feasible(row) for d, (_, row) in zip(done, trials.iterrows())],
                                   index=trials.index, dtype=bool)
    trials["pareto"] = front_of(trials, objectives)
    return trials


def distillations(trials: pd.DataFrame) -> dict[str, float]:
    """How many students the sweep's completed trials distilled, per trial, and the training time reuse saved
    (`fanout`, and students reused by chance): `distillations`, `distillations_per_trial`, `distill_saved_s`."""
    done = trials[trials["status"] == "COMPLETED"]
    if done.empty or "cache_hit_distill" not in done:
        return {}
    trained = int((done["cache_hit_distill"] == 0).sum())
    saved = float(done["distill_saved_s"].fillna(0).sum()) if "distill_saved_s" in done else 0.0
    return {"distillations": trained, "distillations_per_trial": trained / len(done), "distill_saved_s": saved}


def fidelity_figures(rungs: Sequence[RungRecord], trials: pd.DataFrame, steps: int) -> dict[str, float]:
    """Successive halving's tally: `fidelity_rung<k>_promoted` / `_stopped` per rung (from 1), and
    `fidelity_steps_saved`: the distillation steps the students stopped at a rung did not take (of `steps`
    each, or their own searched `steps`), and their share of the steps all students would have taken."""
    if not rungs:
        return {}
    out: dict[str, float] = {}
    for r in rungs:
        key = f"fidelity_rung{r.rung + 1}_{'promoted' if r.promoted else 'stopped'}"
        out[key] = out.get(key, 0) + 1
    budget = {row.trial_id: int(row.steps) if "steps" in trials and pd.notna(getattr(row, "steps", None)) else steps
              for row in trials.itertuples()}
    saved = sum(budget.get(r.trial_id, steps) - r.step for r in rungs if not r.promoted)
    out["fidelity_steps_saved"] = float(saved)
    out["fidelity_steps_saved_share"] = saved / max(1, sum(budget.values()))
    return out


@dataclass(frozen=True)
class SweepResult:
    """A finished sweep: every trial and the front as DataFrames, and the models behind them."""

    config: SweepConfig
    trials: pd.DataFrame  # one row per trial: trial_id, run_name, status, run_id, params, metrics, artifact, error, feasible, pareto
    teacher: TeacherRecord | None  # the teacher as the sweep prepared and measured it
    run_id: str  # the sweep's run in its tracker (MLflow's parent run)
    experiment_id: str
    tracking_uri: str
    wall_seconds: float
    overhead: float  # share of the sweep's CPU-slot time not spent inside a stage
    interrupted: bool  # stopped before every trial ran (Ctrl-C, SIGTERM or `max_failures`)
    hypervolume: float  # of the final front, normalized as in `core.fronts.normalized_hypervolume`
    task: Task | None = None  # the sweep's task: rebuilds models of a task of your own
    models: Mapping[str, str] = dataclasses.field(default_factory=dict)  # trial id -> model URI (front points)
    sweep_id: str = ""  # its id (the parent run's name): `--resume` takes it
    stop_reason: str = ""  # why it stopped early: "interrupted" or "max_failures" ("" when every trial ran)
    objective_set: Objectives | None = None  # the objectives with the registry the sweep ran with (default: this process's)

    @property
    def objectives(self) -> tuple[str, ...]:
        """The objectives the front is over."""
        return self.config.objectives

    @property
    def _objectives(self) -> Objectives:
        return self.objective_set if self.objective_set is not None else Objectives(self.config.objectives)

    @property
    def pareto(self) -> pd.DataFrame:
        """The completed trials no other trial dominates, sorted by the sweep's first measured cost (size by
        default), best first."""
        first = self._objectives.costs()[0]
        return self.trials[self.trials["pareto"]].sort_values(first.name, ascending=first.direction == "min").reset_index(drop=True)

    def recommend(self, **limits: float | None) -> pd.Series | None:
        """The front point to pick: the knee of the front points that meet `limits` (`max_<objective>` /
        `min_<objective>`, as in `constraints`, on top of the sweep's own), or None when none meets them.

        With no limits that bind, it is the knee of the whole front: the point nearest the ideal once each
        objective is scaled to [0, 1] over the front.

        Example: ``result.recommend(max_size_mb=1.0, min_accuracy=0.4)``.
        """
        front = self.pareto
        check = ObjectiveConstraints(ConstraintsConfig(**limits).values)
        missing = [name for name in check.names if name not in front.columns]
        if missing:
            raise KeyError(f"recommend: this sweep did not measure {missing[0]}; limit what it measured: {', '.join(self.objectives)}")
        ok = [check.feasible(row) for _, row in front.iterrows()]
        candidates = front[pd.Series(ok, index=front.index, dtype=bool)]
        if candidates.empty:
            return None
        names = list(self.objectives)
        return candidates.iloc[knee_point(candidates[names].to_numpy(dtype=float), self._objectives.directions())]

    def load_model(self, trial_id: str, *, tokenizer: bool = False) -> nn.Module:
        """Reload a trial's compressed model from its exported artifact: a built-in model (the vocabulary is
        `model.vocab`; an hf_causal_lm model's tokenizer, read from its source, with `tokenizer=True`), or your
        own module for a task of your own."""
        return load_packed(self._artifact(trial_id), task=self.task, tokenizer=tokenizer)

    def _artifact(self, trial_id: str) -> str:
        rows = self.trials[self.trials["trial_id"] == trial_id]
        if rows.empty or not isinstance(rows.iloc[0]["artifact"], str):
            raise KeyError(f"no completed trial {trial_id!r} in this sweep; known: {list(self.trials['trial_id'])}")
        return rows.iloc[0]["artifact"]

    def export_pretrained(self, trial_id: str, directory: str | os.PathLike[str]) -> Path:
        """Write a trial's hf_causal_lm model as a `save_pretrained` directory (`tasks.reload.export_pretrained`)."""
        return export_pretrained(self._artifact(trial_id), directory)
