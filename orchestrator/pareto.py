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
