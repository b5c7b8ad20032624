"""The sweep's trials table: feasibility, the front over feasible trials, the recommendation."""

import numpy as np
import pandas as pd
import pytest

from orchestrator.config import ConfigError, ConstraintsConfig
from orchestrator.config import load_config
from orchestrator.space import ObjectiveConstraints
from orchestrator.results import SweepResult, front_of, work_slot_seconds

OBJECTIVES = ("accuracy", "size_mb", "latency_ms")


def _trials(limits):
    t = pd.DataFrame({
        "trial_id": ["a", "b", "c", "d", "e"],
        "status": ["COMPLETED", "COMPLETED", "COMPLETED", "ERROR", "COMPLETED"],
        "accuracy": [0.50, 0.40, 0.30, np.nan, 0.20],
        "size_mb": [0.10, 0.05, 0.04, np.nan, 0.045],
        "latency_ms": [1.0, 1.0, 1.0, np.nan, 1.0],
        "run_id": ["r1", "r2", "r3", "r4", "r5"],
    })
    c = ObjectiveConstraints(limits)
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
    from orchestrator.monitor import TrialMonitor
    from orchestrator.results import normalized_hypervolume
    from orchestrator.teacher import TeacherInfo

    teacher = TeacherInfo("k", "p", False, 0.5, 5.0, 1_000_000, 2.0, 10, 1.0, 1.5)
    reference = {"accuracy": 0.0, "size_mb": 1.0, "latency_ms": 2.0}
    table = TrialMonitor(3, None, reference=reference, constraints=ConstraintsConfig(),
                     log_hypervolume=lambda *a: None).table()
    assert table.empty and table["feasible"].dtype == bool
    assert normalized_hypervolume(table, reference) == 0.0
    result = SweepResult(config=load_config(None), trials=table, teacher=teacher, run_id="p", experiment_id="1", tracking_uri="x",
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


def test_normalized_hypervolume_uses_the_configured_reference_point_or_the_teachers():
    from orchestrator.config import load_config
    from orchestrator.results import normalized_hypervolume, reference_point
    from orchestrator.teacher import TeacherInfo

    teacher = TeacherInfo("k", "p", False, 0.5, 5.0, 2_000_000, 4.0, 10, 1.0, 1.5,
                          metrics={"size_mb": 2.0, "latency_ms": 4.0, "output_classes": 65.0})  # 2 MB, 4 ms
    assert reference_point(load_config(None), teacher) == {"accuracy": 0.0, "size_mb": 2.0, "latency_ms": 4.0}
    cfg = load_config(None, overrides={"reference_point": {"accuracy": 0.2, "size_mb": 1.0}})
    reference = {"accuracy": 0.2, "size_mb": 1.0, "latency_ms": 4.0}
    assert reference_point(cfg, teacher) == reference
    # perplexity's default reference is a uniform guess over the outputs
    assert reference_point(load_config(None, overrides={"objectives": ["perplexity", "size_mb"]}), teacher) == {
        "perplexity": 65.0, "size_mb": 2.0}
    table = pd.DataFrame({"accuracy": [0.6], "size_mb": [0.5], "latency_ms": [1.0], "feasible": [True]})
    # one point: the box (0.6 - 0.2) x (1.0 - 0.5) x (4 - 1) over the whole box (1 - 0.2) x 1.0 x 4
    assert normalized_hypervolume(table, reference) == pytest.approx(0.4 * 0.5 * 3 / (0.8 * 1.0 * 4))
    assert normalized_hypervolume(table.assign(feasible=False), reference) == 0.0
    one_class = TeacherInfo("k", "p", False, 0.5, 5.0, 2_000_000, 4.0, 10, 1.0, 1.5, metrics={"output_classes": 1.0, "size_mb": 2.0})
    with pytest.raises(ConfigError, match="reference point for perplexity is 1, its best possible value"):
        reference_point(load_config(None, overrides={"objectives": ["perplexity", "size_mb"]}), one_class)
