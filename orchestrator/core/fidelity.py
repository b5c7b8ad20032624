"""Multi-objective successive halving (MO-ASHA, Schmucker et al. 2021): a trial distils a fraction of its steps
and goes on only while it ranks among the best of the trials that reached the same point.

A trial's distillation passes `rungs` checkpoints, at `steps / eta^k` steps for k = rungs .. 1. At each its point
is its validation scores there with the figures measured before training (size, latency, memory: they do not
depend on the weights). It is promoted, and trains on from where it is, when it ranks in the best
`ceil(n / eta)` of the n points of that rung so far (its own included; fewer than `eta` points: promoted,
there is nothing to rank it against yet). Ranking is by non-dominated sorting (the first front, then the
front of what is left, ...), ties within a front broken by crowding distance (NSGA-II's: a point alone in its
region of the objectives ranks first). A trial that is not promoted stops there; the sweep records it as
stopped, and the sampler is told it was pruned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from orchestrator.core.pareto import Sense


def rung_steps(steps: int, eta: int, rungs: int) -> tuple[int, ...]:
    """The steps at which a distillation of `steps` steps is judged, ascending (repeats and steps < 1 dropped).

        >>> rung_steps(300, 3, 2)
        (33, 100)
    """
    at = {round(steps / eta**k) for k in range(rungs, 0, -1)}
    return tuple(sorted(s for s in at if 1 <= s < steps))


def _dominates(a: np.ndarray, b: np.ndarray, senses: Sequence[Sense]) -> bool:
    """`a` at least as good as `b` in every objective and better in one."""
    better = [x > y if s == "max" else x < y for x, y, s in zip(a, b, senses)]
    worse = [x < y if s == "max" else x > y for x, y, s in zip(a, b, senses)]
    return any(better) and not any(worse)


def non_dominated_ranks(points: np.ndarray, senses: Sequence[Sense]) -> np.ndarray:
    """The front each row belongs to: 0 for the non-dominated rows, 1 for those non-dominated once front 0 is
    removed, and so on."""
    n = len(points)
    ranks = np.full(n, -1)
    left, rank = set(range(n)), 0
    while left:
        front = {i for i in left if not any(_dominates(points[j], points[i], senses) for j in left if j != i)}
        for i in front:
            ranks[i] = rank
        left -= front
        rank += 1
    return ranks


def crowding(points: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance of each row among `points` (one front): the sum over objectives of the gap
    between its neighbours, normalised by the objective's range; the extremes get infinity."""
    n, k = points.shape
    out = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(k):
        order = np.argsort(points[:, j], kind="stable")
        span = points[order[-1], j] - points[order[0], j]
        out[order[0]] = out[order[-1]] = np.inf
        if span == 0:
            continue
        out[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / span
    return out


def order(points: np.ndarray, senses: Sequence[Sense]) -> list[int]:
    """Row indices best first: by non-dominated rank, then by crowding distance (largest first) within a rank,
    then by row (earlier first)."""
    ranks = non_dominated_ranks(points, senses)
    crowd = np.zeros(len(points))
    for r in set(ranks.tolist()):
        members = np.flatnonzero(ranks == r)
        crowd[members] = crowding(points[members])
    return sorted(range(len(points)), key=lambda i: (ranks[i], -crowd[i], i))


def promoted(point: Sequence[float], others: np.ndarray, senses: Sequence[Sense], eta: int) -> tuple[bool, int, int]:
    """(whether `point` goes on, its place in the rung counting from 1, the rung's size) among `others`, the
    points that reached the same rung before it. It goes on when its place is within ceil(n / eta) of the n
    points, or while n < eta.

        >>> promoted([0.5, 1.0], np.array([[0.6, 0.5], [0.4, 2.0]]), ["max", "min"], 3)
        (False, 2, 3)
        >>> promoted([0.7, 0.4], np.array([[0.6, 0.5], [0.4, 2.0]]), ["max", "min"], 3)
        (True, 1, 3)
    """
    points = np.vstack([np.asarray(others, float).reshape(-1, len(senses)), np.asarray(point, float)])
    n = len(points)
    place = order(points, senses).index(n - 1) + 1
    return (n < eta or place <= math.ceil(n / eta)), place, n
