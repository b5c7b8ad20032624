"""The validated search space as an Optuna define-by-run function, and the sampler that walks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from orchestrator.config import Choice, ConstraintsConfig, Fixed, ParamSpec, param_values

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


def make_sampler(
    name: str,
    *,
    seed: int,
    params: Mapping[str, ParamSpec] | None = None,
    population_size: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> optuna.samplers.BaseSampler:
    """A seeded sampler: `tpe` (multi-objective TPE), `nsga2` (`population_size` per generation), `random`,
    or `grid` (every combination of the searched `params`, in a seeded order); `options` are more keyword
    arguments of that Optuna sampler. TPE and NSGA-II steer by the constraint values recorded on finished
    trials (`ObjectiveConstraints`); grid and random ignore them."""
    kw = dict(options or {})
    if name == "nsga2" and population_size is not None:
        kw["population_size"] = population_size
    if name == "grid":
        if params is None:
            raise ValueError("a grid sampler needs the params it enumerates")
        kw["search_space"] = {k: param_values(spec) for k, spec in params.items() if not isinstance(spec, Fixed)}
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}")
    return SAMPLERS[name](seed=seed, **kw)


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid, without its `study.stop()` once the grid is used up: that call is only legal inside
    `study.optimize`, and here the study is driven by ask/tell (the sweep's `trials` bounds the run, and
    the config refuses more trials than grid points)."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: Any, values: Any) -> None:
        pass


SAMPLERS: dict[str, type[optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "random": optuna.samplers.RandomSampler,
    "grid": _GridSampler,
}
