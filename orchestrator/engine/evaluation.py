"""A compressed model measured as it ships: the task's held-out metrics (scored here, in the trial), the
artifact's size, and every latency, throughput and memory figure (measured by the sweep's measurement
service, on its target, from the exported artifact).

The held-out metrics are scored twice, with the same settings: on the validation split under their own
names (`accuracy`, `perplexity`: what the search, the front, early stopping and the recommendation
read) and on the test split as `test_<name>` (reported, never read by a decision), so that the front's
accuracies are not chosen on the data that reports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from torch import nn

from orchestrator.core.measure import count_params
from orchestrator.core.objectives import Objectives
from orchestrator.engine.context import SweepContext
from orchestrator.engine.service import measure_on_service
from orchestrator.io.gate import working
from orchestrator.io.storage import fetch
from orchestrator.tasks.base import Task


@dataclass
class Measurement:
    metrics: dict[str, float]
    warnings: list[str] = field(default_factory=list)  # figures measured with less than asked
    wait_seconds: float = 0.0  # time queued for the measurement service


def with_registered(scores: dict[str, float], objectives: Objectives) -> dict[str, float]:
    """A split's scores from the task, with every registered held-out objective computed from them."""
    return {**scores, **objectives.measured("held_out", SimpleNamespace(held_out=scores))}


def held_out_metrics(task: Task, model: nn.Module, data: Any, ctx: SweepContext) -> Measurement:
    """Validation metrics under their own names, test metrics as `test_<name>` (loss left out: perplexity
    says it), each registered held-out objective among them, and a warning when a split scored fewer
    positions than `task.eval_tokens`."""
    out, warnings, asked = {}, [], ctx.config.task.eval_tokens
    for split, prefix in (("val", ""), ("test", "test_")):
        scores = with_registered(task.evaluate(model, data, split), ctx.objectives)
        out.update({f"{prefix}{k}": v for k, v in scores.items() if k != "loss"})
        positions = scores.get("eval_positions")
        if positions is not None and positions < asked:
            warnings.append(f"the {split} split scored {task.units.count(positions, 'position')}, fewer than "
                            f"task.eval_tokens = {asked}")
    return Measurement(out, warnings)


def measure_model(
    task: Task, model: nn.Module, artifact: str | Path, data: Any, ctx: SweepContext, *, service: Any,
    counts: tuple[int, int] | None = None, runnable: str | None = None, sized: Path | None = None,
) -> Measurement:
    """Held-out metrics of `model` (scored here), the size of `artifact` (a storage location), and its target
    figures from the measurement `service`. `counts` (parameters, non-zero) of the compressed shape, when
    int8 layers hide them from torch. `runnable`: the file `measure.runtime` runs, exported from `artifact`.
    `sized`: the file whose bytes are the size, when not `artifact` (the teacher's reference, coded as students are)."""
    with working():  # scoring is work the node's measurements pause, like training (`io.gate`)
        result = held_out_metrics(task, model, data, ctx)
    size = (sized or fetch(artifact)).stat().st_size
    total, nonzero = counts or count_params(model)
    target, waited = measure_on_service(service, str(artifact), runnable)
    result.metrics.update({
        "size_bytes": float(size),
        **ctx.objectives.measured("artifact", SimpleNamespace(size_bytes=size)),
        "bits_per_weight": 8 * size / total,
        "params": float(total),
        "nonzero_params": float(nonzero),
        **target,
    })
    result.wait_seconds = waited
    return result
