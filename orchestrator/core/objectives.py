"""The objectives a sweep can optimise: one registry of name -> direction, unit and how it is measured.

Every part of the product that ranks, bounds or prints a figure (Optuna's directions, the front, the
hypervolume and its reference point, constraints, early stopping, the recommendation, plots, the CLI
table, MLflow, the Model Registry's aliases) reads it through an `Objectives`: the sweep's chosen names
and a snapshot of the registry taken when the sweep starts, which travels to every worker with the sweep
(nothing in a worker reads the registry of its own process). Adding an objective is one
`register_objective` call in the process that starts the sweep, whose `measure` reads a probe of the
compressed model:

- `held_out`: `probe.held_out`, the task's validation metrics, scored in the trial;
- `artifact`: `probe.size_bytes`, the exported artifact's byte length;
- `target`: `probe.timing` (batch-1 latency interleaved with the reference), `probe.extra` (the task's
  own measurements, e.g. decoding speed) or `probe.peak_memory_mb` (a fresh process), measured by the
  sweep's measurement service on its target (`engine.service`).

`measure` returns None where the task cannot give that figure (e.g. perplexity for a task that reports
none); a sweep that asks for it then fails before its trials start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["max", "min"]
Where = Literal["held_out", "artifact", "target"]
DEFAULT_OBJECTIVES = ("accuracy", "size_mb", "latency_ms")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Direction
    unit: str  # "" for a fraction or a ratio
    label: str  # what a plot's axis says
    where: Where  # who measures it (see the module's docstring)
    measure: Callable[[Any], float | None]  # probe -> value, None when the task has no such figure
    ideal: float | None  # the best value possible (bounds the hypervolume's box); None: unbounded
    reference: Callable[[Mapping[str, float]], float]  # the default reference point, from the teacher's metrics
    limits: tuple[float, float] = (-math.inf, math.inf)  # the range a `min_`/`max_` constraint may take
    on_demand: bool = False  # measured only when the sweep names it (an objective or a constraint): it costs more
    optimistic: Callable[[float, float], float] | None = None  # (score, margin) -> the best a student still training could reach (early stopping); None: as scored

    def scale(self, reference: float) -> float:
        """The span from `reference` to the ideal, by which the hypervolume is normalised; for an unbounded
        objective the reference itself (so the axis counts multiples of it)."""
        return abs(reference - self.ideal) if self.ideal is not None else abs(reference)

    @property
    def retained(self) -> bool:
        """A held-out score to maximise: a student's share of the teacher's is reported as `<name>_retained`."""
        return self.where == "held_out" and self.direction == "max"

    def format(self, value: float) -> str:
        """`0.4123`, `0.0412 MB`: the value with its unit."""
        return f"{value:.4g}{' ' + self.unit if self.unit else ''}"


OBJECTIVES: dict[str, Objective] = {}  # this process's registry: what a sweep started here may name


def register_objective(objective: Objective) -> Objective:
    """Make `objective` available, by its name, to every sweep this process starts."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def describe(registry: Mapping[str, Objective] | None = None) -> str:
    """One entry per registered objective, for help and error texts."""
    return ", ".join(f"{o.name} ({o.direction})" for o in (OBJECTIVES if registry is None else registry).values())


class Objectives:
    """A sweep's objectives (`names`, the front is over these, in order) and the registry snapshot they
    were chosen from, immutable: what every part of a sweep, in any process, ranks and measures by.

    Example:
        >>> objectives = Objectives(["accuracy", "size_mb"])
        >>> objectives.directions(), [o.name for o in objectives], objectives["perplexity"].direction
        (['max', 'min'], ['accuracy', 'size_mb'], 'min')
    """

    def __init__(self, names: Sequence[str], registry: Mapping[str, Objective] | None = None) -> None:
        self._registry = dict(OBJECTIVES if registry is None else registry)  # a copy: later registrations do not leak in
        unknown = [name for name in names if name not in self._registry]
        if unknown:
            raise KeyError(f"objective {unknown[0]!r} is not registered; registered: {describe(self._registry)}")
        self.names = tuple(names)

    def __getitem__(self, name: str) -> Objective:
        return self._registry[name]

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __iter__(self) -> Iterator[Objective]:
        return (self._registry[name] for name in self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Objectives) and other.names == self.names and other._registry == self._registry

    def __repr__(self) -> str:
        return f"Objectives({list(self.names)})"

    @property
    def registered(self) -> list[str]:
        """Every objective of the snapshot, chosen or not (a constraint may limit any of them)."""
        return list(self._registry)

    def directions(self, names: Iterable[str] | None = None) -> list[Direction]:
        return [self._registry[name].direction for name in (self.names if names is None else names)]

    def measured(self, where: Where, probe: Any, names: Iterable[str] | None = None) -> dict[str, float]:
        """The values of the objectives among `names` (default: every registered one) that `where`
        measures, from `probe`, skipping those the task cannot give."""
        out = {}
        for name in self._registry if names is None else names:
            objective = self._registry[name]
            if objective.where == where:
                value = objective.measure(probe)
                if value is not None:
                    out[name] = float(value)
        return out

    def target_names(self, asked: Iterable[str]) -> list[str]:
        """The target-measured objectives a sweep records: all of them, and the on-demand ones it asks for."""
        asked = set(asked)
        return [o.name for o in self._registry.values() if o.where == "target" and (not o.on_demand or o.name in asked)]

    def held_out(self) -> list[Objective]:
        """The sweep's objectives scored on held-out data (their test scores are reported beside them)."""
        return [o for o in self if o.where == "held_out"]

    def costs(self) -> list[Objective]:
        """The sweep's measured costs and speeds (size, latency, memory, throughput), else all of them."""
        return [o for o in self if o.where != "held_out"] or list(self)

    def retained(self) -> list[Objective]:
        """Every registered held-out score to maximise (`Objective.retained`)."""
        return [o for o in self._registry.values() if o.retained]

    def describe(self) -> str:
        return describe(self._registry)


def _teacher(name: str) -> Callable[[Mapping[str, float]], float]:
    return lambda teacher: teacher[name]


for _objective in (
    Objective("accuracy", "max", "", "validation accuracy", "held_out", lambda p: p.held_out.get("accuracy"),
              ideal=1.0, reference=lambda teacher: 0.0, limits=(0.0, 1.0), optimistic=lambda v, m: min(1.0, v + m)),
    # a model no better than a uniform guess over its outputs is the worst that counts
    Objective("perplexity", "min", "", "validation perplexity", "held_out", lambda p: p.held_out.get("perplexity"),
              ideal=1.0, reference=_teacher("output_classes"), limits=(1.0, math.inf), optimistic=lambda v, m: max(1.0, v * (1 - m))),
    Objective("size_mb", "min", "MB", "artifact size (MB)", "artifact", lambda p: p.size_bytes / 1e6,
              ideal=0.0, reference=_teacher("size_mb"), limits=(0.0, math.inf)),
    Objective("latency_ms", "min", "ms", "batch-1 latency p50 (ms)", "target", lambda p: p.timing.p50_ms,
              ideal=0.0, reference=_teacher("latency_ms"), limits=(0.0, math.inf)),
    Objective("latency_p95_ms", "min", "ms", "batch-1 latency p95 (ms)", "target", lambda p: p.timing.p95_ms,
              ideal=0.0, reference=_teacher("latency_p95_ms"), limits=(0.0, math.inf)),
    Objective("peak_memory_mb", "min", "MB", "peak inference memory (MB)", "target", lambda p: p.peak_memory_mb,
              ideal=0.0, reference=_teacher("peak_memory_mb"), limits=(0.0, math.inf), on_demand=True),
    Objective("throughput_tokens_per_s", "max", "tokens/s", "throughput (tokens/s)", "target",
              lambda p: p.throughput_per_s if p.throughput_unit == "tokens" else None,
              ideal=None, reference=_teacher("throughput_tokens_per_s"), limits=(0.0, math.inf)),
    Objective("decode_tokens_per_s", "max", "tokens/s", "greedy decoding (tokens/s)", "target",
              lambda p: p.extra.get("decode_tokens_per_s"),
              ideal=None, reference=_teacher("decode_tokens_per_s"), limits=(0.0, math.inf)),
):
    register_objective(_objective)
