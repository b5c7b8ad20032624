"""Optuna samplers by name, seeded; used by the config (to check `sampler_options`) and the sweep."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna


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


def make_sampler(
    name: str,
    *,
    seed: int,
    grid: Mapping[str, list[Any]] | None = None,
    population_size: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> optuna.samplers.BaseSampler:
    """A seeded sampler: `tpe` (multi-objective TPE), `nsga2` (`population_size` per generation), `random`,
    or `grid` (every combination of `grid`'s values, in a seeded order); `options` are more keyword
    arguments of that Optuna sampler. TPE and NSGA-II steer by the constraint values recorded on finished
    trials; grid and random ignore them."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}")
    kw = dict(options or {})
    if name == "nsga2" and population_size is not None:
        kw["population_size"] = population_size
    if name == "grid":
        if grid is None:
            raise ValueError("a grid sampler needs the values it enumerates")
        kw["search_space"] = dict(grid)
    return SAMPLERS[name](seed=seed, **kw)
