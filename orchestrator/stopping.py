"""Multi-objective early stopping: stop distilling a student that cannot reach the front.

A student's size, latency and memory depend on its shape, sparsity and bits, not on its weights, so a
trial measures them before it trains. While it trains it scores the validation split every few steps; it
stops when even those scores made optimistic by a `margin` would be dominated by the sweep's current
front over its objectives, or would miss the sweep's constraints. The sweep writes its current front to `front.json` among the sweep's
files after every trial; trials read it from the storage (`sweep_files.SweepFiles.read_front`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from orchestrator.objectives import OBJECTIVES, directions
from orchestrator.pareto import is_dominated
from orchestrator.space import ObjectiveConstraints

class EarlyStopped(Exception):
    """Raised inside distillation to stop it; the trial reports itself stopped (not failed)."""

    def __init__(self, step: int, val_accuracy: float, reason: str) -> None:
        super().__init__(f"stopped at step {step}: {reason}")
        self.step, self.val_accuracy, self.reason = step, val_accuracy, reason


def optimistic(val: Mapping[str, float], margin: float) -> dict[str, float]:
    """The best a student still training could end at: validation accuracy + `margin` (at most 1), and
    validation perplexity less `margin` of itself (at least 1); any other validation figure as scored."""
    out = dict(val)
    if "accuracy" in val:
        out["accuracy"] = min(1.0, val["accuracy"] + margin)
    if "perplexity" in val:
        out["perplexity"] = max(1.0, val["perplexity"] * (1 - margin))
    return out


def stop_reason(
    val: Mapping[str, float], fixed: Mapping[str, float], *, objectives: Sequence[str], margin: float,
    front: np.ndarray, constraints: ObjectiveConstraints,
) -> str | None:
    """Why a trial should stop now, or None to go on.

    `val` holds its validation scores so far, `fixed` the figures it measured before training (size,
    latency, memory: they depend on its shape, sparsity and bits, not its weights). It stops when its
    optimistic point (`optimistic`) is dominated by a front point in `objectives`, or misses a constraint.

    Example:
        >>> from orchestrator.config import ConstraintsConfig
        >>> names, front = ["accuracy", "size_mb", "latency_ms"], np.array([[0.5, 1.0, 1.0]])
        >>> none = ObjectiveConstraints(ConstraintsConfig())
        >>> stop_reason({"accuracy": 0.3}, {"size_mb": 2.0, "latency_ms": 2.0}, objectives=names, margin=0.05, front=front, constraints=none)
        'dominated: accuracy <= 0.35, size_mb 2, latency_ms 2'
        >>> stop_reason({"accuracy": 0.3}, {"size_mb": 0.5, "latency_ms": 2.0}, objectives=names, margin=0.05, front=front, constraints=none)
    """
    point = {**fixed, **optimistic(val, margin)}
    said = ", ".join(f"{n} {'<=' if OBJECTIVES[n].direction == 'max' else '>='} {point[n]:.4g}" if n in val
                     else f"{n} {point[n]:.4g}" for n in objectives)
    if not constraints.feasible(point):
        return f"infeasible: {said} miss the constraints"
    if len(front) and is_dominated([point[n] for n in objectives], front, directions(objectives)):
        return f"dominated: {said}"
    return None
