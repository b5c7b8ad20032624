"""The search space's vocabulary: a parameter is fixed, a choice or a range (`ParamSpec`), checked by its
`ParamRule`; the values a spec can take; and the limits a sweep puts on its measured figures.

    >>> param_values(Range(0.0, 0.5, step=0.2)), searched_grid({"bits": Choice((4, 8)), "lr": Fixed(0.01)})
    ([0.0, 0.2, 0.4], {'bits': [4, 8]})
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Fixed:
    value: Any  # used by every trial, still logged as a param


@dataclass(frozen=True)
class Choice:
    choices: tuple[Any, ...]  # Optuna suggest_categorical


@dataclass(frozen=True)
class Range:
    low: float  # inclusive
    high: float  # inclusive
    log: bool = False  # sample log-uniformly (learning rates, temperatures)
    step: float | None = None  # discretise; lets equal configs recur (and later be reused)
    integer: bool = False  # suggest_int instead of suggest_float


ParamSpec = Union[Fixed, Choice, Range]


@dataclass(frozen=True)
class ParamRule:
    """What one searchable parameter takes: declared by the core (compression and distillation) or by a task
    (its students' shape). Its name is user-facing: the MLflow param name."""

    kind: type  # int, float or str
    ok: Callable[[Any], bool]
    need: str  # what `ok` demands, said to the user
    default: Any  # value when the YAML leaves the parameter out
    doc: str = ""  # what it means, one line


def param_values(spec: ParamSpec) -> list[Any] | None:
    """Every value `spec` can take, or None for a continuous range."""
    if isinstance(spec, Fixed):
        return [spec.value]
    if isinstance(spec, Choice):
        return list(spec.choices)
    if spec.integer:
        step = int(spec.step or 1)
        return list(range(int(spec.low), int(spec.high) + 1, step))
    if spec.step is not None:  # Optuna's grid of a stepped float: low + k * step up to high
        n = int(math.floor((spec.high - spec.low) / spec.step + 1e-9)) + 1
        return [round(spec.low + k * spec.step, 12) for k in range(n)]
    return None


def searched_grid(params: Mapping[str, ParamSpec]) -> dict[str, list[Any]] | None:
    """Every value of every searched parameter (what a grid sampler enumerates), or None if one is continuous."""
    values = {name: param_values(spec) for name, spec in params.items() if not isinstance(spec, Fixed)}
    return None if any(v is None for v in values.values()) else values


class ObjectiveConstraints:
    """A sweep's limits on its measured figures (`max_<figure>` / `min_<figure>` -> limit): one violation
    value per limit, <= 0 when met (Optuna's convention). The sweep's searcher records them on each
    finished Optuna trial with `Trial.set_constraint`, which TPE and NSGA-II read.

    Example:
        >>> ObjectiveConstraints({"max_size_mb": 2.0, "min_accuracy": 0.5}).violations({"accuracy": 0.4, "size_mb": 1.0})
        {'max_size_mb': -1.0, 'min_accuracy': 0.09999999999999998}
    """

    def __init__(self, limits: Mapping[str, float]) -> None:
        self.limits = dict(limits)

    @property
    def names(self) -> list[str]:
        """The figures the limits read."""
        return sorted({key[4:] for key in self.limits})

    def violations(self, values: Mapping[str, float]) -> dict[str, float]:
        out = {}
        for key, limit in self.limits.items():
            value = values[key[4:]]
            out[key] = value - limit if key.startswith("max_") else limit - value
        return out

    def feasible(self, values: Mapping[str, float]) -> bool:
        return all(v <= 0 for v in self.violations(values).values())
