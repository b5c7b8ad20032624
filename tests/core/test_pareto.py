import numpy as np
import optuna
import pytest

from orchestrator.core.pareto import pareto_mask

SENSES = ["max", "min", "min"]


def _brute_force(v, senses):
    sign = np.array([-1 if s == "max" else 1 for s in senses])
    c = v * sign
    out = []
    for i in range(len(c)):
        dominated = any(np.all(c[j] <= c[i]) and np.any(c[j] < c[i]) for j in range(len(c)) if j != i)
        out.append(not dominated)
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_random_points(seed):
    rng = np.random.default_rng(seed)
    v = rng.random((40, 3)).round(1)  # rounding makes ties and duplicates
    np.testing.assert_array_equal(pareto_mask(v, SENSES), _brute_force(v, SENSES))


def test_matches_optuna_best_trials():
    rng = np.random.default_rng(7)
    v = rng.random((30, 3))
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for row in v:
        study.add_trial(optuna.trial.create_trial(values=list(row), params={}, distributions={}))
    expected = sorted(t.number for t in study.best_trials)
    assert sorted(np.flatnonzero(pareto_mask(v, SENSES)).tolist()) == expected


def test_duplicates_both_stay_and_bad_shapes_are_refused():
    assert pareto_mask(np.array([[1.0, 1.0], [1.0, 1.0]]), ["max", "min"]).all()
    with pytest.raises(ValueError, match="values must be"):
        pareto_mask(np.zeros((3, 2)), SENSES)
    with pytest.raises(ValueError, match="NaN"):
        pareto_mask(np.array([[np.nan, 1.0, 1.0]]), SENSES)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [2, 3])
def test_hypervolume_matches_optuna_on_random_points(seed, k):
    from optuna._hypervolume import compute_hypervolume

    from orchestrator.core.pareto import hypervolume

    rng = np.random.default_rng(seed)
    v = rng.random((25, k))
    senses = (["max", "min", "min"])[:k]
    ref = np.array([0.1, 0.9, 0.95][:k])
    sign = np.array([-1.0 if s == "max" else 1.0 for s in senses])
    cost, ref_cost = v * sign, ref * sign
    inside = cost[(cost < ref_cost).all(1)]
    expected = compute_hypervolume(inside, ref_cost) if len(inside) else 0.0
    assert hypervolume(v, senses, ref) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_hypervolume_of_one_box_and_of_nothing():
    from orchestrator.core.pareto import hypervolume

    assert hypervolume(np.array([[0.5, 1.0, 2.0]]), SENSES, [0.0, 3.0, 4.0]) == pytest.approx(0.5 * 2 * 2)
    assert hypervolume(np.array([[0.5, 5.0, 2.0]]), SENSES, [0.0, 3.0, 4.0]) == 0.0
    assert hypervolume(np.empty((0, 3)), SENSES, [0.0, 3.0, 4.0]) == 0.0


def test_knee_point_is_the_balanced_compromise():
    from orchestrator.core.pareto import knee_point

    front = np.array([[0.30, 0.02, 1.0], [0.34, 0.04, 1.1], [0.35, 0.40, 3.0], [0.10, 0.01, 0.9]])
    assert knee_point(front, SENSES) == 1
    assert knee_point(front[:1], SENSES) == 0
    with pytest.raises(ValueError):
        knee_point(np.empty((0, 3)), SENSES)
