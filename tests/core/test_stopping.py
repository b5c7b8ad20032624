"""Multi-objective early stopping: the decision against an independent brute force, and the front file."""

import numpy as np
import pytest

from orchestrator.config import ConstraintsConfig
from orchestrator.core.objectives import Objectives
from orchestrator.core.pareto import is_dominated
from orchestrator.core.space import ObjectiveConstraints
from orchestrator.core.stopping import stop_reason
from orchestrator.io.storage import Storage
from orchestrator.io.sweep_files import SweepFiles

NO_LIMITS = ObjectiveConstraints(ConstraintsConfig().values)


def _dominated_brute(p, front):
    """(accuracy max, size min, latency min): some front row no worse everywhere and better somewhere."""
    for q in front:
        no_worse = q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2]
        better = q[0] > p[0] or q[1] < p[1] or q[2] < p[2]
        if no_worse and better:
            return True
    return False


@pytest.mark.parametrize("seed", range(5))
def test_is_dominated_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    front = rng.random((8, 3)).round(1)  # coarse values: ties happen
    for p in rng.random((200, 3)).round(1):
        assert is_dominated(p, front, ["max", "min", "min"]) == _dominated_brute(p, front)


NAMES = ["accuracy", "size_mb", "latency_ms"]


def _stop(val, size, latency, *, margin, front, constraints=NO_LIMITS):
    return stop_reason({"accuracy": val}, {"size_mb": size, "latency_ms": latency}, objectives=Objectives(NAMES), margin=margin,
                       front=front, constraints=constraints)


@pytest.mark.parametrize("seed", range(5))
def test_stops_exactly_the_trials_whose_optimistic_point_is_dominated(seed):
    rng = np.random.default_rng(seed)
    front = rng.random((6, 3))
    margin = 0.05
    for val, size, latency in rng.random((300, 3)):
        reason = _stop(val, size, latency, margin=margin, front=front)
        optimistic = (min(1.0, val + margin), size, latency)
        if _dominated_brute(optimistic, front):
            assert reason is not None and reason.startswith("dominated")
        else:  # never stops a trial that could still reach the front
            assert reason is None


def test_a_planted_dominated_trial_stops_and_a_smaller_one_never_does():
    front = np.array([[0.40, 0.02, 0.5]])
    assert _stop(0.10, 0.05, 0.9, margin=0.05, front=front).startswith("dominated")
    # the margin makes it optimistic: within it of the front's accuracy, it goes on
    assert _stop(0.36, 0.05, 0.9, margin=0.05, front=front) is None
    # smaller than every front point: it cannot be dominated, whatever its accuracy
    assert _stop(0.0, 0.01, 0.9, margin=0.0, front=front) is None
    assert _stop(0.0, 0.05, 0.9, margin=0.0, front=np.zeros((0, 3))) is None


def test_a_trial_that_cannot_meet_the_constraints_stops():
    limits = ObjectiveConstraints(ConstraintsConfig(max_size_mb=0.03).values)
    assert _stop(0.9, 0.05, 1.0, margin=0.05, front=np.zeros((0, 3)), constraints=limits).startswith("infeasible")
    assert _stop(0.9, 0.02, 1.0, margin=0.05, front=np.zeros((0, 3)), constraints=limits) is None
    at_least = ObjectiveConstraints(ConstraintsConfig(min_accuracy=0.5).values)
    assert _stop(0.40, 0.02, 1.0, margin=0.05, front=np.zeros((0, 3)), constraints=at_least).startswith("infeasible")
    assert _stop(0.46, 0.02, 1.0, margin=0.05, front=np.zeros((0, 3)), constraints=at_least) is None


def test_on_perplexity_the_optimistic_point_is_a_margin_lower_and_a_memory_limit_is_read_from_the_premeasured_figures():
    names = ["perplexity", "peak_memory_mb"]
    front = np.array([[10.0, 5.0]])
    # 12 * (1 - 0.1) = 10.8 at more memory: dominated; 11 * 0.9 = 9.9 beats the front's 10: goes on
    assert stop_reason({"perplexity": 12.0}, {"peak_memory_mb": 6.0}, objectives=Objectives(names), margin=0.1, front=front,
                       constraints=NO_LIMITS).startswith("dominated: perplexity >= 10.8")
    assert stop_reason({"perplexity": 11.0}, {"peak_memory_mb": 6.0}, objectives=Objectives(names), margin=0.1, front=front,
                       constraints=NO_LIMITS) is None
    memory = ObjectiveConstraints(ConstraintsConfig(max_peak_memory_mb=5.5).values)
    assert stop_reason({"perplexity": 3.0}, {"peak_memory_mb": 6.0}, objectives=Objectives(names), margin=0.1, front=front,
                       constraints=memory).startswith("infeasible")


def test_the_front_file_round_trips_and_starts_empty(tmp_path):
    files = SweepFiles(Storage(str(tmp_path)), "s")
    assert files.read_front(NAMES).shape == (0, 3)
    files.write_front(NAMES, np.array([[0.3, 0.1, 1.0], [0.4, 0.2, 2.0]]))
    np.testing.assert_array_equal(files.read_front(NAMES), [[0.3, 0.1, 1.0], [0.4, 0.2, 2.0]])
    files.write_front(NAMES, np.zeros((0, 3)))
    assert files.read_front(NAMES).shape == (0, 3)
    with pytest.raises(ValueError, match="not \\['perplexity', 'size_mb'\\]"):
        files.read_front(["perplexity", "size_mb"])
