"""The validated search space as an Optuna define-by-run function, and the limits on the objectives."""

from __future__ import annotations

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


class ObjectiveConstraints:
    """The sweep's limits on the objectives: one violation value per set limit, <= 0 when met (Optuna's
    convention). The sweep's searcher records them on each finished Optuna trial with
    `Trial.set_constraint`, which TPE and NSGA-II read (Ray's OptunaSearch forwards no constraints)."""

    def __init__(self, limits: ConstraintsConfig) -> None:
        self.limits = limits

    def violations(self, accuracy: float, size_mb: float, latency_ms: float) -> dict[str, float]:
        c, out = self.limits, {}
        if c.max_size_mb is not None:
            out["max_size_mb"] = size_mb - c.max_size_mb
        if c.max_latency_ms is not None:
            out["max_latency_ms"] = latency_ms - c.max_latency_ms
        if c.min_accuracy is not None:
            out["min_accuracy"] = c.min_accuracy - accuracy
        return out

    def feasible(self, accuracy: float, size_mb: float, latency_ms: float) -> bool:
        return all(v <= 0 for v in self.violations(accuracy, size_mb, latency_ms).values())
