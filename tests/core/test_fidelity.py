"""Successive halving's promotion rule (`core.fidelity`) against references written from the definitions."""

import math
import random

import numpy as np
import pytest

from orchestrator.core.fidelity import crowding, non_dominated_ranks, order, promoted, rung_steps

SENSES = ["max", "min", "min"]


def _dominates(a, b):
    ge = [a[0] >= b[0], a[1] <= b[1], a[2] <= b[2]]
    gt = [a[0] > b[0], a[1] < b[1], a[2] < b[2]]
    return all(ge) and any(gt)


def _chain_rank(points, i, memo):
    """Brute force: the front of point i is the length of the longest chain of points dominating one another
    above it (0 when nothing dominates it)."""
    if i not in memo:
        above = [j for j in range(len(points)) if _dominates(points[j], points[i])]
        memo[i] = 0 if not above else 1 + max(_chain_rank(points, j, memo) for j in above)
    return memo[i]


@pytest.mark.parametrize("seed", range(40))
def test_ranks_and_promotion_agree_with_references_from_the_definitions(seed):
    rng = random.Random(seed)
    n, eta = rng.randint(1, 9), rng.choice([2, 3, 4])
    grid = [0.1, 0.2, 0.3]  # few values: ties and equal points happen
    points = np.array([[rng.choice(grid), rng.choice(grid), rng.choice(grid)] for _ in range(n)])
    memo = {}
    expected = [_chain_rank(points, i, memo) for i in range(n)]
    assert non_dominated_ranks(points, SENSES).tolist() == expected
    ranked = order(points, SENSES)
    assert sorted(ranked) == list(range(n)) and [expected[i] for i in ranked] == sorted(expected)  # fronts in order
    go_on, place, size = promoted(points[-1], points[:-1], SENSES, eta)
    keep = math.ceil(n / eta)
    assert size == n and place == ranked.index(n - 1) + 1
    better = sum(r < expected[-1] for r in expected)  # points on earlier fronts: always ahead of it
    worse = sum(r > expected[-1] for r in expected)
    assert better < place <= n - worse
    if n >= eta and better >= keep:
        assert not go_on  # a full rung's best places are all taken by better fronts
    if n < eta or (expected[-1] == 0 and sum(r == 0 for r in expected) <= keep):
        assert go_on  # too few to judge, or on a first front small enough to be kept whole
    assert go_on == (n < eta or place <= keep)


def test_crowding_keeps_the_extremes_and_prefers_the_isolated():
    front = np.array([[0.1, 1.0], [0.2, 0.9], [0.21, 0.89], [0.5, 0.2]])
    d = crowding(front)
    assert np.isinf(d[0]) and np.isinf(d[3]) and d[1] > 0 and d[2] > 0
    assert order(front, ["max", "max"])[:2] == [0, 3]  # both extremes first, then the most isolated


def test_rungs_are_fractions_of_the_steps_in_ascending_order():
    assert rung_steps(300, 3, 2) == (33, 100)
    assert rung_steps(20, 2, 1) == (10,)
    assert rung_steps(4, 3, 3) == (1,)  # repeats and steps below 1 dropped
    assert rung_steps(300, 3, 0) == ()
