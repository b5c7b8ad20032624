import optuna
import pytest

from orchestrator.config import load_config
from orchestrator.space import OBJECTIVES, DefineByRun, make_sampler


def _sample(sampler_name, seed, n=6):
    cfg = load_config(None, overrides={
        "params.bits": {"choices": [2, 4, 8]}, "params.sparsity": {"low": 0.0, "high": 0.9},
        "params.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "params.layers": {"low": 1, "high": 3},
        "params.optimizer": "sgd",
    })
    space = DefineByRun(cfg.params)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(sampler_name, seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        fixed = space(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, [i / n, 1 - i / n, 1.0])
    return out


def test_fixed_params_come_back_as_constants_and_searched_ones_are_suggested():
    points = _sample("random", 0)
    assert all(p["optimizer"] == "sgd" and p["width"] == 64 for p in points)
    assert {p["bits"] for p in points} <= {2, 4, 8}
    assert all(0 <= p["sparsity"] <= 0.9 and 1 <= p["layers"] <= 3 for p in points)


def test_same_seed_same_sequence_and_different_seed_differs():
    for name in ("tpe", "nsga2", "random"):
        assert _sample(name, 3) == _sample(name, 3)
        assert _sample(name, 3) != _sample(name, 4)


def test_objectives_are_accuracy_size_and_latency():
    assert OBJECTIVES == {"accuracy": "max", "size_mb": "min", "latency_ms": "min"}


def test_constraints_are_computed_from_objective_values_and_reach_the_sampler():
    from orchestrator.config import ConstraintsConfig
    from orchestrator.space import ObjectiveConstraints

    limits = ConstraintsConfig(max_size_mb=0.05, max_latency_ms=None, min_accuracy=0.3)
    c = ObjectiveConstraints(limits)
    assert c.violations(0.25, 0.07, 9.0) == [pytest.approx(0.02), pytest.approx(0.05)]
    assert c.feasible(0.31, 0.05, 9.0) and not c.feasible(0.31, 0.051, 9.0)
    assert ObjectiveConstraints(ConstraintsConfig()).violations(0.0, 9.0, 9.0) == []
    for name in ("tpe", "nsga2"):
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(name, seed=0, constraints=limits))
        trial = study.ask()
        trial.set_user_attr("objectives", [0.25, 0.07, 1.0])  # what the sweep's searcher does before tell
        study.tell(trial, [0.25, 0.07, 1.0])
        assert study.trials[0].system_attrs["constraints"] == pytest.approx([0.02, 0.05])
        bare = study.ask()
        study.tell(bare, [0.5, 0.01, 1.0])
        assert study.trials[1].system_attrs["constraints"] == (1.0, 1.0)  # no recorded values: infeasible
