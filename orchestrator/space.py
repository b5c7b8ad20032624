"""The validated search space as an Optuna define-by-run function, and the sampler that walks it."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import optuna

from orchestrator.config import Choice, ConstraintsConfig, Fixed, ParamSpec

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


OBJECTIVES_ATTR = "objectives"  # Optuna user attribute holding a finished trial's objective values


class ObjectiveConstraints:
    """Optuna `constraints_func`: one value per set limit, <= 0 when met.

    The limits bound objectives. Optuna calls this before the trial's values are stored, so it reads them
    from the user attribute `objectives`, which the sweep's searcher sets just before it tells the study
    (Ray's OptunaSearch forwards no constraint values). A class, so it pickles.
    """

    def __init__(self, limits: ConstraintsConfig) -> None:
        self.limits = limits

    def violations(self, accuracy: float, size_mb: float, latency_ms: float) -> list[float]:
        c, out = self.limits, []
        if c.max_size_mb is not None:
            out.append(size_mb - c.max_size_mb)
        if c.max_latency_ms is not None:
            out.append(latency_ms - c.max_latency_ms)
        if c.min_accuracy is not None:
            out.append(c.min_accuracy - accuracy)
        return out

    def feasible(self, accuracy: float, size_mb: float, latency_ms: float) -> bool:
        return all(v <= 0 for v in self.violations(accuracy, size_mb, latency_ms))

    def __call__(self, trial: optuna.trial.FrozenTrial) -> list[float]:
        values = trial.user_attrs.get(OBJECTIVES_ATTR)
        if values is None:  # a trial with no result counts as infeasible
            return [1.0] * len(self.violations(0.0, 0.0, 0.0))
        return self.violations(*values)


def make_sampler(name: str, *, seed: int, constraints: ConstraintsConfig | None = None) -> optuna.samplers.BaseSampler:
    """`tpe` (multi-objective TPE), `nsga2` or `random`, seeded; TPE and NSGA-II get the constraints."""
    limited = constraints is not None and any(v is not None for v in dataclasses.astuple(constraints))
    func = ObjectiveConstraints(constraints) if limited else None
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constraints_func=func)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=func)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"unknown sampler {name!r}")
