"""One trial, top to bottom: distill -> prune -> quantize -> export -> measure.

`tune_trial` is the Ray Tune function (the driver). It starts a Ray Train run for distillation, then does
the cheap stages itself, in its own process, and reports measured metrics. `build_teacher` is the same
story for the teacher, run once per storage by the sweep.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator import cache
from orchestrator.config import SweepConfig
from orchestrator.losses import LossWeights
from orchestrator.measure import count_params, measure_latency, score_lm
from orchestrator.stages.distill import DistillJob, DistillResult, load_teacher, run_distill
from orchestrator.stages.export import export
from orchestrator.stages.prune import prune_
from orchestrator.stages.quantize import quantize_
from orchestrator.tasks.char_lm import CharData, build_model

ARTIFACT = "model.orc"


@dataclass(frozen=True)
class TeacherInfo:
    key: str  # content hash of the teacher's config and data: its cache entry
    path: str  # checkpoint (config + state_dict) in storage
    cache_hit: bool  # reused from an earlier sweep
    accuracy: float
    perplexity: float
    size_bytes: int  # its exported float32 artifact
    latency_ms: float
    params: int
    train_seconds: float  # time inside its training loop when it was built


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: small, picklable; big things are paths into storage."""

    config: SweepConfig
    data_path: str
    teacher: TeacherInfo
    sweep_dir: str  # <storage>/sweeps/<sweep id>


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space (names as in the YAML's `params`)."""

    layers: int
    width: int
    heads: int
    beta: float
    lam: float
    temperature: float
    sparsity: float
    bits: int
    optimizer: str
    lr: float

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> "TrialParams":
        values = dict(params)
        values["lam"] = values.pop("lambda")
        return cls(**values)


def _measure(
    model: nn.Module, size: int, data: CharData, cfg: SweepConfig, *, reference: nn.Module | None
) -> dict[str, float]:
    """Held-out accuracy/perplexity, artifact size and batch-1 latency of a model as it runs."""
    test = score_lm(model, data.test, context=cfg.task.context, max_positions=cfg.task.eval_tokens)
    example = data.test[: cfg.task.context].long()[None]  # (1, T): a fixed held-out prompt
    m = cfg.measure
    lat = measure_latency(model, example, threads=m.threads, warmup=m.warmup, repeats=m.repeats, reference=reference)
    total, nonzero = count_params(model)
    out = {
        "accuracy": test.accuracy,
        "perplexity": test.perplexity,
        "size_bytes": float(size),
        "size_mb": size / 1e6,
        "bits_per_weight": 8 * size / total,
        "latency_ms": lat.p50_ms,
        "latency_p95_ms": lat.p95_ms,
        "throughput_tokens_per_s": lat.throughput,
        "measure_threads": float(lat.threads),
        "params": float(total),
        "nonzero_params": float(nonzero),
    }
    if lat.reference_p50_ms is not None:
        out["latency_vs_teacher"] = lat.p50_ms / lat.reference_p50_ms
    return out


def _model_cfg(cfg: SweepConfig, vocab_size: int, *, layers: int, width: int, heads: int) -> dict[str, int]:
    return {"vocab_size": vocab_size, "context": cfg.task.context, "layers": layers, "width": width, "heads": heads}


def _train(cfg: SweepConfig, job: DistillJob, *, name: str, cpus_per_worker: float) -> DistillResult:
    r = cfg.resources
    return run_distill(
        job, name=name, storage_path=str(cfg.storage_path / "train"), num_workers=r.num_workers,
        use_gpu=r.use_gpu, cpus_per_worker=cpus_per_worker, placement_strategy=r.placement_strategy,
    )


def build_teacher(cfg: SweepConfig, data: CharData, data_path: str, data_key: str) -> TeacherInfo:
    """Train the teacher once per storage (keyed by its config, data and seed) and measure it."""
    t = cfg.teacher
    model_cfg = _model_cfg(cfg, len(data.vocab), layers=t.layers, width=t.width, heads=t.heads)
    # What determines the teacher's weights: its recipe, data, seed and DDP world size (not its thread count).
    recipe = {k: v for k, v in dataclasses.asdict(t).items() if k != "cpus_per_worker"}
    key = cache.content_key("teacher", recipe, model_cfg, data_key, cfg.seed, cfg.resources.num_workers)

    def build(tmp: Path) -> None:
        cpus = t.cpus_per_worker or cfg.resources.cpus_per_worker
        job = DistillJob(
            data_path=data_path, teacher_path=None, model=model_cfg, steps=t.steps, batch_size=t.batch_size,
            warmup=min(100, t.steps // 10), lr=t.lr, optimizer="adamw", seed=cfg.seed, weights=None,
            val_tokens=cfg.distill.val_tokens, threads=max(1, int(cpus)),
        )
        result = _train(cfg, job, name=f"teacher-{key}", cpus_per_worker=cpus)
        torch.save({"config": model_cfg, "state_dict": result.state_dict}, tmp / "teacher.pt")
        teacher = load_teacher(tmp / "teacher.pt")
        size = export(teacher, tmp / ARTIFACT, bits=32, meta={"vocab": data.vocab})
        metrics = _measure(teacher, size, data, cfg, reference=None)
        metrics["train_seconds"] = result.train_seconds
        (tmp / "teacher.json").write_text(json.dumps(metrics, indent=1))

    entry, hit = cache.get_or_build(cfg.storage_path / "teachers", key, build)
    m = json.loads((entry / "teacher.json").read_text())
    return TeacherInfo(
        key=key, path=str(entry / "teacher.pt"), cache_hit=hit, accuracy=m["accuracy"], perplexity=m["perplexity"],
        size_bytes=int(m["size_bytes"]), latency_ms=m["latency_ms"], params=int(m["params"]),
        train_seconds=m["train_seconds"],
    )


def distill_student(cfg: SweepConfig, p: TrialParams, ctx: TrialContext, vocab_size: int, *, trial_id: str) -> tuple[Path, bool]:
    """The distilled (float) student for `p`, trained now or reused: a later trial that differs only in
    post-training parameters (sparsity, bits) gets the earlier trial's student without starting Ray Train.

    Returns (cache entry holding student.pt and distill.json, hit).
    """
    job = DistillJob(
        data_path=ctx.data_path, teacher_path=ctx.teacher.path,
        model=_model_cfg(cfg, vocab_size, layers=p.layers, width=p.width, heads=p.heads), steps=cfg.distill.steps,
        batch_size=cfg.distill.batch_size, warmup=cfg.distill.warmup, lr=p.lr, optimizer=p.optimizer,
        seed=cfg.seed, weights=LossWeights(temperature=p.temperature, lam=p.lam, beta=p.beta),
        val_tokens=cfg.distill.val_tokens, threads=max(1, int(cfg.resources.cpus_per_worker)),
    )
    # Everything that determines the student: the teacher (its key covers the data), the job, the world size.
    recipe = {k: v for k, v in dataclasses.asdict(job).items() if k not in ("data_path", "teacher_path", "threads")}
    key = cache.content_key("student", ctx.teacher.key, recipe, cfg.resources.num_workers)

    def build(tmp: Path) -> None:
        result = _train(cfg, job, name=f"distill-{trial_id}", cpus_per_worker=cfg.resources.cpus_per_worker)
        torch.save({"config": job.model, "state_dict": result.state_dict}, tmp / "student.pt")
        info = {"train_seconds": result.train_seconds, "val_accuracy": result.val_accuracy, "val_loss": result.val_loss}
        (tmp / "distill.json").write_text(json.dumps(info))

    return cache.get_or_build(cfg.storage_path / "students", key, build)


def run_pipeline(params: TrialParams, ctx: TrialContext, *, trial_id: str) -> dict[str, Any]:
    """Distill, prune, quantize, export and measure one student; returns its metrics (all measured)."""
    cfg, p = ctx.config, params
    data = CharData.load(ctx.data_path)
    timings: dict[str, float] = {}

    t = time.perf_counter()
    entry, hit = distill_student(cfg, p, ctx, len(data.vocab), trial_id=trial_id)
    distilled = json.loads((entry / "distill.json").read_text())
    timings["time_distill_s"] = 0.0 if hit else distilled["train_seconds"]
    timings["time_distill_fit_s"] = time.perf_counter() - t  # includes Ray Train worker start-up

    student = build_model(len(data.vocab), cfg.task.context, layers=p.layers, width=p.width, heads=p.heads)
    student.load_state_dict(torch.load(entry / "student.pt", weights_only=True)["state_dict"])

    t = time.perf_counter()
    masks = prune_(student, p.sparsity)
    timings["time_prune_s"] = time.perf_counter() - t

    t = time.perf_counter()
    quantized = quantize_(student, p.bits, masks)
    timings["time_quantize_s"] = time.perf_counter() - t

    t = time.perf_counter()
    artifact = Path(ctx.sweep_dir) / "trials" / trial_id / ARTIFACT
    size = export(student, artifact, bits=p.bits, masks=masks, quantized=quantized, meta={"vocab": data.vocab})
    timings["time_export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    teacher = load_teacher(ctx.teacher.path)
    metrics = _measure(student, size, data, cfg, reference=teacher)
    timings["time_measure_s"] = time.perf_counter() - t

    metrics.update(
        compression_ratio=ctx.teacher.size_bytes / size,
        accuracy_retained=metrics["accuracy"] / ctx.teacher.accuracy,
        val_accuracy=distilled["val_accuracy"],
        val_loss=distilled["val_loss"],
        cache_hit_distill=float(hit),
        **timings,
    )
    metrics["time_stages_s"] = sum(v for k, v in timings.items() if k != "time_distill_fit_s")
    return {**metrics, "artifact": str(artifact)}


def tune_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Ray Tune function: one trial's driver."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    ray.tune.report(run_pipeline(TrialParams.from_config(config), ctx, trial_id=trial_id))
