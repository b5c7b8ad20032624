import optuna

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
