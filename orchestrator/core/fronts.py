"""The front and its hypervolume over a table of trials (one row per trial, a column per figure)."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from orchestrator.core.errors import ConfigError
from orchestrator.core.objectives import Objectives
from orchestrator.core.pareto import hypervolume, pareto_mask


def front_of(trials: pd.DataFrame, objectives: Objectives) -> pd.Series:
    """Boolean Series: the `feasible` (completed, within the constraints) trials that no other feasible trial
    dominates in `objectives`."""
    done = trials["feasible"].to_numpy(dtype=bool)  # feasible implies completed
    mask = np.zeros(len(trials), dtype=bool)
    if done.any():
        values = trials.loc[done, list(objectives.names)].to_numpy(dtype=float)
        mask[done] = pareto_mask(values, objectives.directions())
    return pd.Series(mask, index=trials.index)


def normalized_hypervolume(trials: pd.DataFrame, reference: Mapping[str, float], objectives: Objectives) -> float:
    """Hypervolume of the feasible trials from `reference` (objective -> value), divided by the box from the
    reference to each objective's ideal (accuracy 1, perplexity 1, size, latency and memory 0; a speed,
    unbounded, counts in multiples of its reference): 0 when nothing beats the reference in every
    objective, 1 is unreachable.

        >>> t = pd.DataFrame({"accuracy": [0.5], "size_mb": [1.0], "feasible": [True]})
        >>> normalized_hypervolume(t, {"accuracy": 0.0, "size_mb": 2.0}, Objectives(["accuracy", "size_mb"]))
        0.25
    """
    names = list(objectives.names)
    done = trials[trials["feasible"]]
    volume = hypervolume(done[names].to_numpy(dtype=float), objectives.directions(), [reference[n] for n in names])
    return volume / math.prod(objectives[n].scale(reference[n]) for n in names)



def reference_point(objectives: Objectives, given: Mapping[str, float], teacher: Mapping[str, float], *,
                    source: str) -> dict[str, float]:
    """The point, one value per objective, the hypervolume is measured from: `given` (the config's
    `reference_point`), else each objective's default from the teacher's measured `teacher` figures;
    `ConfigError` for a point no trial could beat.

        >>> reference_point(Objectives(["accuracy", "size_mb"]), {}, {"size_mb": 2.0}, source="x.yaml")
        {'accuracy': 0.0, 'size_mb': 2.0}
    """
    point = {}
    for o in objectives:
        point[o.name] = given[o.name] if o.name in given else float(o.reference(teacher))
        if not o.scale(point[o.name]) > 0:
            raise ConfigError(f"{source}: the hypervolume's reference point for {o.name} is {point[o.name]:g}, its best possible "
                              f"value, so no trial could count; set `reference_point.{o.name}` to a worse value")
    return point
