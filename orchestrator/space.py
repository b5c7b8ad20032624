"""The validated search space as an Optuna define-by-run function, and the sampler that walks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from orchestrator.config import Choice, Fixed, ParamSpec

# The objectives: names are user-facing (MLflow metrics, Tune results); senses for Optuna and the front.
OBJECTIVES: dict[str, str] = {"accuracy": "max", "size_mb": "min", "latency_ms": "min"}


class DefineByRun:
    """Optuna define-by-run space: suggests every searched parameter and returns the fixed ones as
    constants (so they are still logged per trial). A class, not a closure: Tune pickles its searcher."""

    def __init__(self, params: Mapping[str, ParamSpec]) -> None:
        self.params = dict(params)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        fixed = {}
        for name, spec in self.params.items():
            if isinstance(spec, Fixed):
                fixed[name] = spec.value
            elif isinstance(spec, Choice):
                trial.suggest_categorical(name, list(spec.choices))
            elif spec.integer:
                trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
            else:
                trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        return fixed


def make_sampler(name: str, *, seed: int) -> optuna.samplers.BaseSampler:
    """`tpe` (multi-objective TPE), `nsga2` or `random`, seeded."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
