"""A compressed model measured as it runs: the task's held-out metrics, the artifact's size, batch-1
latency (interleaved with a reference), throughput and the task's own extra measurements.

The held-out metrics are scored twice, with the same settings: on the validation split under their own
names (`accuracy`, `perplexity`: what the search, the front, early stopping and the recommendation
read) and on the test split as `test_<name>` (reported, never read by a decision), so that the front's
accuracies are not chosen on the data that reports them."""

from __future__ import annotations

from typing import Any

from torch import nn

from orchestrator.config import SweepConfig
from orchestrator.measure import count_params, measure_latency
from orchestrator.tasks.base import Task

ARTIFACT = "model.orc"  # a trial's packed artifact, in its directory of the sweep


def measure_model(
    task: Task, model: nn.Module, size: int, data: Any, cfg: SweepConfig, *, reference: nn.Module | None,
    counts: tuple[int, int] | None = None,
) -> dict[str, float]:
    """Validation and test metrics, artifact size, batch-1 latency and throughput of `model`.

    `counts` (parameters, non-zero) of the compressed shape, when int8 layers hide them from torch."""
    out = {k: v for k, v in task.evaluate(model, data, "val").items() if k != "loss"}  # perplexity is reported, not loss
    out.update({f"test_{k}": v for k, v in task.evaluate(model, data, "test").items() if k != "loss"})
    example = task.example(data)
    m = cfg.measure
    lat = measure_latency(model, example, threads=m.threads, warmup=m.warmup, repeats=m.repeats, reference=reference)
    total, nonzero = counts or count_params(model)
    out.update({
        "size_bytes": float(size),
        "size_mb": size / 1e6,
        "bits_per_weight": 8 * size / total,
        "latency_ms": lat.p50_ms,
        "latency_p95_ms": lat.p95_ms,
        f"throughput_{task.throughput_unit()}_per_s": lat.throughput * task.units_per_example(example),
        **task.measure_extra(model, data, threads=m.threads),
        "measure_threads": float(lat.threads),
        "params": float(total),
        "nonzero_params": float(nonzero),
    })
    if lat.reference_p50_ms is not None:
        out["latency_vs_teacher"] = lat.p50_ms / lat.reference_p50_ms
    return out
