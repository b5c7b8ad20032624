"""Bits where they matter: each tensor a width from a candidate set, the summed sensitivity least, the stored
bits within a budget (a multiple-choice knapsack), solved exactly.

    >>> costs = np.array([[2, 4, 8], [2, 4, 8]]) * 100      # two tensors of 100 weights at 2, 4 or 8 bits
    >>> scores = np.array([[9.0, 1.0, 0.0], [2.0, 0.5, 0.0]])  # the first hurts more when rounded coarsely
    >>> allocate(scores, costs, budget=600).tolist()         # 3 bits per weight: 2 + 4 or 4 + 2
    [1, 0]

`allocate` states the problem as an integer linear program (one binary per tensor and width, one width per
tensor, the summed cost within the budget) and solves it to proven optimality with HiGHS' branch and bound
(`scipy.optimize.milp`, gap 0). Costs are whole bits, so the budget is checked in integers afterwards.
"""

from __future__ import annotations

import numpy as np


class Infeasible(ValueError):
    """No assignment of widths fits the budget (even every tensor at its cheapest width costs more)."""


def allocate(scores: np.ndarray, costs: np.ndarray, budget: int) -> np.ndarray:
    """The choice (a column index) per row of `scores` (T, C) that minimises the summed score with the summed
    `costs` (T, C, whole bits) at most `budget`; ties go to the lower cost. Raises `Infeasible`."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array, kron

    scores, costs = np.asarray(scores, float), np.asarray(costs, np.int64)
    T, C = scores.shape
    if costs.shape != (T, C):
        raise ValueError(f"costs must have the shape of scores {scores.shape}, got {costs.shape}")
    cheapest = int(costs.min(axis=1).sum())
    if cheapest > budget:
        raise Infeasible(f"the cheapest allocation takes {cheapest} bits, over the budget of {budget}")
    # a tensor's scores shifted to start at 0 keep the problem well scaled; a tiny cost term breaks ties downward
    c = (scores - scores.min(axis=1, keepdims=True)).reshape(-1)
    scale = max(float(np.abs(c).max()), 1e-30)
    c = c / scale + 1e-9 * (costs.reshape(-1) / max(int(costs.max()), 1))
    one_each = LinearConstraint(kron(csr_array(np.eye(T)), csr_array(np.ones((1, C)))), 1, 1)
    within = LinearConstraint(costs.reshape(1, -1).astype(float), -np.inf, float(budget))
    result = milp(c, constraints=[one_each, within], integrality=np.ones(T * C), bounds=Bounds(0, 1),
                  options={"mip_rel_gap": 0.0, "presolve": True})
    if result.x is None:
        raise Infeasible(f"no allocation within {budget} bits ({result.message})")
    choice = result.x.reshape(T, C).argmax(axis=1)
    spent = int(costs[np.arange(T), choice].sum())
    if spent > budget:  # the solver's feasibility tolerance, in whole bits: never over the budget
        raise Infeasible(f"the solver's allocation takes {spent} bits, over the budget of {budget}")
    return choice


__all__ = ["Infeasible", "allocate"]
