"""The objectives a sweep can optimise: one registry of name -> direction, unit and how it is measured.

Every other part of the product (Optuna's directions, the front, the hypervolume and its reference point,
constraints, early stopping, the recommendation, plots, the CLI table, MLflow) reads a sweep's
`objectives` list and this registry. Adding an objective is one `register_objective` call whose
`measure` reads a probe of the compressed model:

- `held_out`: `probe.held_out`, the task's validation metrics, scored in the trial;
- `artifact`: `probe.size_bytes`, the exported artifact's byte length;
- `target`: `probe.timing` (batch-1 latency interleaved with the reference), `probe.extra` (the task's
  own measurements, e.g. decoding speed) or `probe.peak_memory_mb` (a fresh process), measured by the
  sweep's measurement service on its target (`orchestrator.service`).

`measure` returns None where the task cannot give that figure (e.g. perplexity for a task that reports
none); a sweep that asks for it then fails before its trials start.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Direction = Literal["max", "min"]
DEFAULT_OBJECTIVES = ("accuracy", "size_mb", "latency_ms")


@dataclass(frozen=True)
class Objective:
    name: str
    direction: Direction
    unit: str  # "" for a fraction or a ratio
    label: str  # what a plot's axis says
    where: Literal["held_out", "artifact", "target"]  # who measures it (see the module's docstring)
    measure: Callable[[Any], float | None]  # probe -> value, None when the task has no such figure
    ideal: float | None  # the best value possible (bounds the hypervolume's box); None: unbounded
    reference: Callable[[Mapping[str, float]], float]  # the default reference point, from the teacher's metrics
    limits: tuple[float, float] = (-math.inf, math.inf)  # the range a `min_`/`max_` constraint may take
    on_demand: bool = False  # measured only when the sweep names it (an objective or a constraint): it costs more


OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    """Make `objective` available to every sweep by its name."""
    if objective.name in OBJECTIVES:
        raise ValueError(f"objective {objective.name!r} is already registered")
    OBJECTIVES[objective.name] = objective
    return objective


def _teacher(name: str) -> Callable[[Mapping[str, float]], float]:
    return lambda teacher: teacher[name]


for _objective in (
    Objective("accuracy", "max", "", "validation accuracy", "held_out", lambda p: p.held_out.get("accuracy"),
              ideal=1.0, reference=lambda teacher: 0.0, limits=(0.0, 1.0)),
    # a model no better than a uniform guess over its outputs is the worst that counts
    Objective("perplexity", "min", "", "validation perplexity", "held_out", lambda p: p.held_out.get("perplexity"),
              ideal=1.0, reference=_teacher("output_classes"), limits=(1.0, math.inf)),
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


def install(registry: Mapping[str, Objective]) -> None:
    """Register in this process the objectives of `registry` (a sweep's snapshot of its driver's registry)
    that it lacks: Ray's workers import this module afresh, without the objectives your code registered."""
    for name, objective in registry.items():
        OBJECTIVES.setdefault(name, objective)


def directions(names: Sequence[str]) -> list[Direction]:
    return [OBJECTIVES[name].direction for name in names]


def measured(names: Iterable[str], where: str, probe: Any) -> dict[str, float]:
    """The values of the objectives among `names` that `where` measures, from `probe` (skipping those the
    task cannot give)."""
    out = {}
    for name in names:
        objective = OBJECTIVES[name]
        if objective.where == where:
            value = objective.measure(probe)
            if value is not None:
                out[name] = float(value)
    return out


def target_names(asked: Iterable[str]) -> list[str]:
    """The target-measured objectives a sweep records: all of them, and the on-demand ones it asks for."""
    asked = set(asked)
    return [o.name for o in OBJECTIVES.values() if o.where == "target" and (not o.on_demand or o.name in asked)]


def scale(name: str, reference: float) -> float:
    """The span of objective `name` from `reference` to its ideal, by which the hypervolume is normalised;
    for an unbounded objective the reference itself (so the axis counts multiples of it)."""
    ideal = OBJECTIVES[name].ideal
    return abs(reference - ideal) if ideal is not None else abs(reference)


def describe() -> str:
    """One line per registered objective, for help and error texts."""
    return ", ".join(f"{o.name} ({o.direction})" for o in OBJECTIVES.values())
