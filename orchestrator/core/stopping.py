"""Multi-objective early stopping: stop distilling a student that cannot reach the front.

A student's size, latency and memory depend on its shape, sparsity and bits, not on its weights, so a
trial measures them before it trains. While it trains it scores the validation split every few steps; it
stops when even those scores made optimistic by a `margin` (each held-out objective says how:
`Objective.optimistic`) would be dominated by the sweep's current front over its objectives, or would miss
the sweep's constraints. The sweep writes its current front to `front.json` among its files after every
trial; trials read it from the storage.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from orchestrator.core.objectives import Objectives
from orchestrator.core.pareto import is_dominated
from orchestrator.core.space import ObjectiveConstraints


class EarlyStopped(Exception):
    """Raised inside distillation to stop it; the trial reports itself stopped (not failed)."""

    def __init__(self, step: int, scores: Mapping[str, float], reason: str) -> None:
        super().__init__(f"stopped at step {step}: {reason}")
        self.step, self.scores, self.reason = step, dict(scores), reason


def optimistic(val: Mapping[str, float], margin: float, objectives: Objectives) -> dict[str, float]:
    """The best a student still training could end at: each validation score of a registered objective
    with an `optimistic` rule moved by `margin` (accuracy + margin, at most 1; perplexity less `margin` of
    itself, at least 1); any other figure as scored."""
    out = dict(val)
    for name, value in val.items():
        rule = objectives[name].optimistic if name in objectives else None
        if rule is not None:
            out[name] = rule(value, margin)
    return out


def stop_reason(
    val: Mapping[str, float], fixed: Mapping[str, float], *, objectives: Objectives, margin: float,
    front: np.ndarray, constraints: ObjectiveConstraints,
) -> str | None:
    """Why a trial should stop now, or None to go on.

    `val` holds its validation scores so far, `fixed` the figures it measured before training (size,
    latency, memory: they depend on its shape, sparsity and bits, not its weights). It stops when its
    optimistic point (`optimistic`) is dominated by a front point in the sweep's objectives, or misses a
    constraint.

    Example:
        >>> objectives, front = Objectives(["accuracy", "size_mb", "latency_ms"]), np.array([[0.5, 1.0, 1.0]])
        >>> none = ObjectiveConstraints({})
        >>> stop_reason({"accuracy": 0.3}, {"size_mb": 2.0, "latency_ms": 2.0}, objectives=objectives, margin=0.05, front=front, constraints=none)
        'dominated: accuracy <= 0.35, size_mb 2, latency_ms 2'
        >>> stop_reason({"accuracy": 0.3}, {"size_mb": 0.5, "latency_ms": 2.0}, objectives=objectives, margin=0.05, front=front, constraints=none)
    """
    point = {**fixed, **optimistic(val, margin, objectives)}
    said = ", ".join(f"{o.name} {'<=' if o.direction == 'max' else '>='} {point[o.name]:.4g}" if o.name in val
                     else f"{o.name} {point[o.name]:.4g}" for o in objectives)
    if not constraints.feasible(point):
        return f"infeasible: {said} miss the constraints"
    if len(front) and is_dominated([point[n] for n in objectives.names], front, objectives.directions()):
        return f"dominated: {said}"
    return None
