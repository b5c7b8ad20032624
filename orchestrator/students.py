"""Trained students, cached: a later trial that needs the same trained model gets it without training.

A student is keyed by everything that determines its weights: what it learns from (the teacher, or its
cached outputs), its description and recipe, the world size, the task's own fingerprint. Not where it
runs: both launchers train alike. Recovery fine-tuning after one-shot pruning, and after quantization
(QAT from the quantized weights, or a codebook's centroids), is cached the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator import cache
from orchestrator.config import SweepConfig
from orchestrator.config.techniques import CodebookQuantization, MagnitudePruning
from orchestrator.losses import LossWeights
from orchestrator.stages.codebook import codebook_state
from orchestrator.stages.compress import Quantized, quant_spec
from orchestrator.stages.distill import Check, DistillJob, DistillResult, GradualSpec, run_distill
from orchestrator.stages.prune import PruneResult
from orchestrator.stages.quantize import QuantSpec
from orchestrator.tasks.base import Task, TrialParams
from orchestrator.storage import fetch
from orchestrator.teacher import TeacherInfo, TeacherOutputsInfo


def distill_job(
    cfg: SweepConfig, task: Task, p: TrialParams, *, data_path: str, teacher: TeacherInfo,
    outputs: TeacherOutputsInfo | None, model: dict[str, Any], steps: int, warmup: int, init_path: str | None = None,
    gradual: GradualSpec | None = None, patience: int | None = None,
) -> DistillJob:
    """A distillation job from the teacher (its cached outputs, or live) with `p`'s recipe."""
    spec = quant_spec(cfg.pipeline, p.bits, p.group_size)
    return DistillJob(
        task=task, data_path=data_path, teacher_path=None if outputs else teacher.path,
        teacher_outputs_path=outputs.path if outputs else None, model=model, steps=steps,
        batch_size=cfg.distill.batch_size, warmup=warmup, lr=p.lr, optimizer=p.optimizer, seed=cfg.seed,
        weights=LossWeights(temperature=p.temperature, lam=p.lam, beta=p.beta), val_tokens=cfg.distill.val_tokens,
        threads=max(1, int(cfg.resources.cpus_per_worker)), weight_decay=p.weight_decay,
        temperature_end=cfg.distill.temperature_end, layer_map=cfg.distill.layer_map, init_path=init_path,
        gradual=gradual, qat=spec if cfg.pipeline.qat and spec is not None and spec.integer else None,
        precision=cfg.distill.precision, patience=patience, check_every=cfg.distill.check_every,
        checkpoint_every=cfg.distill.checkpoint_every,
    )


def _job_key(kind: str, source: str, job: DistillJob, cfg: SweepConfig, *extra: Any) -> str:
    recipe = {f.name: getattr(job, f.name) for f in dataclasses.fields(job)
              if f.name not in ("task", "data_path", "teacher_path", "teacher_outputs_path", "threads", "init_path",
                                "checkpoint_every")}
    return cache.content_key(kind, source, recipe, cfg.resources.num_workers, job.task.fingerprint(), *extra)


def save_checkpoint(task: Task, path: Path, model: nn.Module, masks: dict[str, torch.Tensor] | None = None,
                    codebook: dict[str, Any] | None = None) -> None:
    blob: dict[str, Any] = {"config": task.describe(model), "state_dict": model.state_dict()}
    if masks:
        blob["masks"] = masks
    if codebook:
        blob["codebook"] = codebook
    torch.save(blob, path)


def load_checkpoint(task: Task, path: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A student checkpoint (a path or storage location): the model and the keep-masks held while it
    trained (empty if none)."""
    blob = torch.load(fetch(path), weights_only=True)
    model = task.build_model(blob["config"])
    model.load_state_dict(blob["state_dict"])
    return model, blob.get("masks", {})


def _train(cfg: SweepConfig, job: DistillJob, *, name: str, check: Check | None = None) -> DistillResult:
    r = cfg.resources
    return run_distill(
        job, name=name, storage_path=cfg.store.location("train"), num_workers=r.num_workers,
        use_gpu=r.use_gpu, cpus_per_worker=r.cpus_per_worker, placement_strategy=r.placement_strategy,
        in_process=cfg.distill_in_trial, check=check,
    )


def _trained(cfg: SweepConfig, key: str, job: DistillJob, start: nn.Module, masks: dict[str, torch.Tensor],
             *, name: str, check: Check | None = None, codebook: dict[str, Any] | None = None) -> Callable[[Path], None]:
    """The cache entry's builder: train `job` from `start` and keep student.pt and distill.json."""

    def build(tmp: Path) -> None:
        init = tmp / "init.pt"
        save_checkpoint(job.task, init, start, masks, codebook)
        where = str(init) if cfg.distill_in_trial else cfg.store.publish(init)  # Ray Train workers read it on their nodes
        try:
            result = _train(cfg, dataclasses.replace(job, init_path=where), name=name, check=check)
        finally:
            cfg.store.discard(init)
        torch.save({"config": job.model, "state_dict": result.state_dict, **({"masks": masks} if masks else {})},
                   tmp / "student.pt")
        info = {"steps": result.steps, "train_seconds": result.train_seconds, "val_accuracy": result.val_accuracy,
                "val_loss": result.val_loss, "worker_nodes": list(result.worker_nodes),
                "worker_weights": list(result.worker_weights), "curves": result.curves,
                "resumed_from": result.resumed_from}
        (tmp / "distill.json").write_text(json.dumps(info))

    return build


def distill_student(
    cfg: SweepConfig, task: Task, p: TrialParams, *, data: Any, data_path: str, teacher: TeacherInfo,
    outputs: TeacherOutputsInfo | None, teacher_model: nn.Module, trial_id: str, check: Check | None = None,
) -> tuple[Path, bool]:
    """The distilled (float) student for `p`, trained now or reused: a later trial that differs only in
    post-training parameters (sparsity, bits) gets the earlier trial's student without training. Gradual
    pruning and QAT happen here, so then sparsity or bits are part of the student. A `check` that stops
    training (`EarlyStopped`) leaves no cache entry behind.

    Returns (cache entry holding student.pt and distill.json, hit).
    """
    gradual = None
    if cfg.pipeline.gradual_pruning:
        assert isinstance(cfg.pipeline.prune, MagnitudePruning)
        gradual = GradualSpec(cfg.pipeline.prune, p.sparsity)
    start = task.student(cfg, p, data, teacher_model)
    job = distill_job(cfg, task, p, data_path=data_path, teacher=teacher, outputs=outputs, model=task.describe(start),
                      steps=p.steps or cfg.distill.steps, warmup=cfg.distill.warmup, gradual=gradual,
                      patience=cfg.distill.patience)
    source = outputs.key if outputs else teacher.key
    key = _job_key("student", source, job, cfg, teacher.key)
    build = _trained(cfg, key, job, start, {}, name=f"distill-{trial_id}", check=check)
    return cfg.store.entry("students", key, build)


def recover_student(
    cfg: SweepConfig, task: Task, p: TrialParams, pruned: PruneResult, source: str, *, data_path: str,
    teacher: TeacherInfo, outputs: TeacherOutputsInfo | None, trial_id: str,
) -> tuple[PruneResult, bool]:
    """Recovery fine-tuning after one-shot pruning: `prune.recovery_steps` of distillation from the pruned
    model, pruned weights held at zero (structured: the smaller shape kept). Keyed by the model it starts
    from (`source`: the student's or teacher's key), the prune method and the sparsity."""
    method = cfg.pipeline.prune
    assert method is not None
    steps = method.recovery_steps
    job = distill_job(cfg, task, p, data_path=data_path, teacher=teacher, outputs=outputs,
                      model=task.describe(pruned.model), steps=steps, warmup=min(cfg.distill.warmup, steps // 10))
    start = {"method": method.method, **dataclasses.asdict(method), "sparsity": p.sparsity}
    key = _job_key("recovered", source, job, cfg, start)
    build = _trained(cfg, key, job, pruned.model, pruned.masks, name=f"recover-{trial_id}")
    entry, hit = cfg.store.entry("students", key, build)
    model, masks = load_checkpoint(task, entry / "student.pt")
    return PruneResult(model.train(False), masks), hit


def tune_quantized(
    cfg: SweepConfig, task: Task, p: TrialParams, model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor],
    quantized: Quantized, *, data_path: str, teacher: TeacherInfo, outputs: TeacherOutputsInfo | None, trial_id: str,
) -> tuple[nn.Module, bool]:
    """Recovery fine-tuning after quantization: `quantize.recovery_steps` of distillation from the
    quantized model (without a distill stage: the teacher's own compressed copy against its float
    outputs), pruned weights held at zero. Integer grids train as QAT from step 0 (their latent weights
    come back); a codebook trains its centroids with the assignments fixed. Keyed by the quantized
    model's weights, its masks and the recipe."""
    method = cfg.pipeline.quantize
    assert method is not None
    steps = method.recovery_steps
    job = distill_job(cfg, task, p, data_path=data_path, teacher=teacher, outputs=outputs, model=task.describe(model),
                      steps=steps, warmup=min(cfg.distill.warmup, steps // 10))
    codebook = None
    if isinstance(method, CodebookQuantization):
        codebook = codebook_state(quantized)  # type: ignore[arg-type]
        job = dataclasses.replace(job, qat=None)
    else:
        job = dataclasses.replace(job, qat=dataclasses.replace(spec, method=dataclasses.replace(method, qat_start=0.0)))
    start = cache.tensors_digest(model.state_dict()), cache.tensors_digest(masks)
    key = _job_key("quantize_recovered", outputs.key if outputs else teacher.key, job, cfg, *start)
    build = _trained(cfg, key, job, model, masks, name=f"tune-{trial_id}", codebook=codebook)
    entry, hit = cfg.store.entry("students", key, build)
    tuned, _ = load_checkpoint(task, entry / "student.pt")
    return tuned.train(False), hit
