"""The sweep's trials table: feasibility, the front over feasible trials, the recommendation; slot accounting."""

import numpy as np
import pandas as pd

from orchestrator import load_config
from orchestrator.config import ConstraintsConfig
from orchestrator.core.fronts import front_of, normalized_hypervolume
from orchestrator.core.objectives import Objectives
from orchestrator.core.space import ObjectiveConstraints
from orchestrator.engine.result import SweepResult, trials_table
from orchestrator.engine.run import work_slot_seconds

OBJECTIVES = Objectives(["accuracy", "size_mb", "latency_ms"])


def _trials(limits):
    t = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e"],
        "status": ["COMPLETED", "COMPLETED", "COMPLETED", "ERROR", "COMPLETED"],
        "accuracy": [0.50, 0.40, 0.30, np.nan, 0.20],
        "size_mb": [0.10, 0.05, 0.04, np.nan, 0.045],
        "latency_ms": [1.0, 1.0, 1.0, np.nan, 1.0],
        "run_id": ["r1", "r2", "r3", "r4", "r5"],
    })
    c = ObjectiveConstraints(limits.values)
    t["feasible"] = [s == "COMPLETED" and c.feasible(row) for s, (_, row) in zip(t.status, t.iterrows())]
    t["pareto"] = front_of(t, OBJECTIVES)
    return t


def test_infeasible_trials_never_reach_the_front_even_when_they_dominate():
    free = _trials(ConstraintsConfig())
    assert free["pareto"].tolist() == [True, True, True, False, False]  # e is dominated by c
    capped = _trials(ConstraintsConfig(max_size_mb=0.06))
    assert capped["feasible"].tolist() == [False, True, True, False, True]
    assert capped["pareto"].tolist() == [False, True, True, False, False]


def test_recommend_takes_the_knee_of_the_front_points_within_the_limits():
    t = _trials(ConstraintsConfig())
    result = SweepResult(config=load_config(None), trials=t, teacher=None, run_id="p", experiment_id="1", tracking_uri="x",
                         wall_seconds=1.0, overhead=0.0, interrupted=False, hypervolume=0.0)
    assert result.recommend()["trial_id"] == "b"
    assert result.recommend(min_accuracy=0.45)["trial_id"] == "a"
    assert result.recommend(max_size_mb=0.045)["trial_id"] == "c"
    assert result.recommend(min_accuracy=0.9) is None


def test_a_sweep_with_no_finished_trial_has_an_empty_front_and_no_recommendation():
    reference = {"accuracy": 0.0, "size_mb": 1.0, "latency_ms": 2.0}
    table = trials_table([], OBJECTIVES, ObjectiveConstraints({}))
    assert table.empty and table["feasible"].dtype == bool
    assert normalized_hypervolume(table, reference, OBJECTIVES) == 0.0
    result = SweepResult(config=load_config(None), trials=table, teacher=None, run_id="p", experiment_id="1", tracking_uri="x",
                         wall_seconds=1.0, overhead=0.0, interrupted=True, hypervolume=0.0)
    assert result.pareto.empty and result.recommend() is None


def test_slot_time_counts_a_slot_only_while_a_trial_remains_for_it():
    # one slot: the whole phase
    assert work_slot_seconds([3.0, 7.0], 0.0, 7.0, 1) == 7.0
    # two slots, three trials ending at 4, 6, 10: both slots count until 6, then one (nothing left for the other)
    assert work_slot_seconds([6.0, 4.0, 10.0], 0.0, 10.0, 2) == 2 * 6.0 + 4.0
    # more slots than trials: only as many slots as trials
    assert work_slot_seconds([5.0, 5.0], 0.0, 5.0, 4) == 10.0
    assert work_slot_seconds([], 0.0, 5.0, 2) == 0.0
