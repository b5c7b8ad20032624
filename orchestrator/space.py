"""The validated search space as an Optuna define-by-run function, and the limits on the objectives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from orchestrator.config import Choice, ConstraintsConfig, Fixed, ParamSpec


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
    """The sweep's limits on its measured figures: one violation value per set limit, <= 0 when met
    (Optuna's convention). The sweep's searcher records them on each finished Optuna trial with
    `Trial.set_constraint`, which TPE and NSGA-II read (Ray's OptunaSearch forwards no constraints).

    Example:
        >>> ObjectiveConstraints(ConstraintsConfig(max_size_mb=2.0, min_accuracy=0.5)).violations({"accuracy": 0.4, "size_mb": 1.0})
        {'max_size_mb': -1.0, 'min_accuracy': 0.09999999999999998}
    """

    def __init__(self, limits: ConstraintsConfig) -> None:
        self.limits = limits

    @property
    def names(self) -> list[str]:
        """The figures the limits read."""
        return self.limits.names

    def violations(self, values: Mapping[str, float]) -> dict[str, float]:
        out = {}
        for key, limit in self.limits.values.items():
            value = values[key[4:]]
            out[key] = value - limit if key.startswith("max_") else limit - value
        return out

    def feasible(self, values: Mapping[str, float]) -> bool:
        return all(v <= 0 for v in self.violations(values).values())
