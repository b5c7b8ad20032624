"""Pareto front of measured trials: pure numpy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Sense = Literal["max", "min"]


def pareto_mask(values: np.ndarray, senses: Sequence[Sense]) -> np.ndarray:
    """True for the rows of `values` (n, k) that no other row dominates.

    A row dominates another when it is at least as good in every objective and strictly better in one.
    Identical rows do not dominate each other, so all copies stay on the front.

    Example:
        >>> pareto_mask(np.array([[0.9, 2.0], [0.8, 1.0], [0.7, 3.0]]), ["max", "min"]).tolist()
        [True, True, False]
    """
    v = np.asarray(values, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(senses):
        raise ValueError(f"values must be (n, {len(senses)}), got shape {v.shape}")
    if np.isnan(v).any():
        raise ValueError("values contain NaN; drop unfinished trials before computing the front")
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    cost = v * sign  # (n, k), everything minimised
    no_worse = (cost[:, None, :] <= cost[None, :, :]).all(-1)  # [j, i]: j no worse than i everywhere
    better = (cost[:, None, :] < cost[None, :, :]).any(-1)  # [j, i]: j strictly better somewhere
    return ~(no_worse & better).any(0)


def is_dominated(point: Sequence[float], others: np.ndarray, senses: Sequence[Sense]) -> bool:
    """True when some row of `others` (n, k) is at least as good as `point` (k,) everywhere and strictly
    better somewhere.

    Example:
        >>> is_dominated([0.5, 2.0], np.array([[0.6, 2.0]]), ["max", "min"])
        True
        >>> is_dominated([0.5, 1.0], np.array([[0.6, 2.0]]), ["max", "min"])
        False
    """
    o = np.asarray(others, dtype=float).reshape(-1, len(senses))
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    cost, mine = o * sign, np.asarray(point, dtype=float) * sign
    return bool(((cost <= mine).all(-1) & (cost < mine).any(-1)).any())


def knee_point(values: np.ndarray, senses: Sequence[Sense]) -> int:
    """Index of the row closest to the ideal point once every objective is scaled to [0, 1] over the rows
    (0 = best seen, 1 = worst seen): the balanced compromise of a front.

    Example:
        >>> knee_point(np.array([[0.9, 10.0], [0.85, 2.0], [0.3, 1.0]]), ["max", "min"])
        1
    """
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        raise ValueError("no points to choose from")
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    cost = v * sign
    span = cost.max(0) - cost.min(0)
    scaled = (cost - cost.min(0)) / np.where(span > 0, span, 1.0)
    return int(np.argmin(np.linalg.norm(scaled, axis=1)))


def hypervolume(values: np.ndarray, senses: Sequence[Sense], reference: Sequence[float]) -> float:
    """Volume of objective space that `values` (n, k) dominate, bounded by the `reference` point.

    Exact, by slicing along the last objective (O(n^k); a sweep's front is small). Points no better than
    the reference in some objective add nothing.

    Example:
        >>> hypervolume(np.array([[0.5, 1.0], [0.8, 2.0]]), ["max", "min"], [0.0, 4.0])
        2.1
    """
    v = np.asarray(values, dtype=float).reshape(-1, len(senses))
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    cost, ref = v * sign, np.asarray(reference, dtype=float) * sign
    cost = cost[(cost < ref).all(1)]
    if len(cost) == 0:
        return 0.0
    return float(_hv_min(cost[pareto_mask(cost, ["min"] * len(senses))], ref))


def _hv_min(points: np.ndarray, ref: np.ndarray) -> float:
    if points.shape[1] == 1:
        return float(ref[0] - points[:, 0].min())
    order = np.argsort(points[:, -1])
    pts = points[order]
    total = 0.0
    for i in range(len(pts)):
        upper = pts[i + 1, -1] if i + 1 < len(pts) else ref[-1]
        if upper > pts[i, -1]:  # the slab in which the first i+1 points are active
            total += (upper - pts[i, -1]) * _hv_min(pts[: i + 1, :-1], ref[:-1])
    return total
