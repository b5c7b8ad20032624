"""Multi-objective early stopping: stop distilling a student that cannot reach the front.

A student's size and latency depend on its shape, sparsity and bits, not on its weights, so a trial
measures them before it trains. While it trains it scores validation accuracy every few steps; it stops
when even that accuracy plus an optimistic `margin` would be dominated by the sweep's current front, or
would miss the sweep's constraints. The sweep writes its current front to `front.json` in the sweep's
directory after every trial; trials read it there (a shared path on a cluster, like the rest of storage).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from orchestrator.pareto import is_dominated
from orchestrator.space import OBJECTIVES, ObjectiveConstraints

FRONT_FILE = "front.json"


class EarlyStopped(Exception):
    """Raised inside distillation to stop it; the trial reports itself stopped (not failed)."""

    def __init__(self, step: int, val_accuracy: float, reason: str) -> None:
        super().__init__(f"stopped at step {step}: {reason}")
        self.step, self.val_accuracy, self.reason = step, val_accuracy, reason


def write_front(sweep_dir: str | os.PathLike[str], points: np.ndarray) -> None:
    """The current front's (accuracy, size_mb, latency_ms) rows, replaced atomically."""
    path = Path(sweep_dir) / FRONT_FILE
    tmp = path.with_name(f".{FRONT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"objectives": list(OBJECTIVES), "points": np.asarray(points, float).tolist()}))
    os.replace(tmp, path)


def read_front(sweep_dir: str | os.PathLike[str]) -> np.ndarray:
    """(n, 3) rows of the current front; empty before any trial has finished."""
    path = Path(sweep_dir) / FRONT_FILE
    if not path.exists():
        return np.zeros((0, len(OBJECTIVES)))
    return np.asarray(json.loads(path.read_text())["points"], dtype=float).reshape(-1, len(OBJECTIVES))


def stop_reason(
    val_accuracy: float, size_mb: float, latency_ms: float, *, margin: float, front: np.ndarray,
    constraints: ObjectiveConstraints,
) -> str | None:
    """Why a trial with these figures should stop now, or None to go on.

    It stops when its optimistic accuracy (validation accuracy + margin, at most 1) together with its
    measured size and latency is dominated by a front point, or misses a constraint.

    Example:
        >>> from orchestrator.config import ConstraintsConfig
        >>> front = np.array([[0.5, 1.0, 1.0]])
        >>> stop_reason(0.3, 2.0, 2.0, margin=0.05, front=front, constraints=ObjectiveConstraints(ConstraintsConfig()))
        'dominated: accuracy <= 0.3500 at 2 MB, 2 ms'
        >>> stop_reason(0.3, 0.5, 2.0, margin=0.05, front=front, constraints=ObjectiveConstraints(ConstraintsConfig()))
    """
    optimistic = min(1.0, val_accuracy + margin)
    if not constraints.feasible(optimistic, size_mb, latency_ms):
        return f"infeasible: accuracy <= {optimistic:.4f}, {size_mb:.4g} MB, {latency_ms:.4g} ms miss the constraints"
    if len(front) and is_dominated([optimistic, size_mb, latency_ms], front, list(OBJECTIVES.values())):
        return f"dominated: accuracy <= {optimistic:.4f} at {size_mb:.4g} MB, {latency_ms:.4g} ms"
    return None
