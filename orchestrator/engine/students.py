"""Trained students, cached: a later trial that needs the same trained model gets it without training.

A student is keyed by everything that determines its weights: what it learns from (the teacher, or its
cached outputs), its description and recipe (the techniques' training hooks included: gradual pruning and
QAT make sparsity and bits part of the student), the world size, the task's own fingerprint. Not where it
runs: both launchers train alike. Recovery fine-tuning after one-shot pruning, and after quantization (QAT
from the quantized weights, or a codebook's centroids), is cached the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.core.keys import content_key, tensors_digest
from orchestrator.core.losses import LossWeights
from orchestrator.engine.context import SweepContext
from orchestrator.engine.prepare import TeacherOutputsInfo
from orchestrator.io.checkpoints import load_checkpoint, save_checkpoint
from orchestrator.io.records import TeacherRecord, to_json
from orchestrator.io.storage import Cache
from orchestrator.tasks.base import Task, TrialParams
from orchestrator.techniques.base import PruneResult, TrainingHook
from orchestrator.techniques.quantize import Quantized, QuantSpec
from orchestrator.techniques.weights import HoldMasks
from orchestrator.training.job import DistillJob
from orchestrator.training.launch import run_distill
from orchestrator.training.loop import Check

_NOT_RECIPE = ("task", "data_path", "teacher_path", "teacher_outputs_path", "threads", "init_path", "checkpoint_every")


def distill_job(ctx: SweepContext, task: Task, p: TrialParams, *, data_path: str, teacher: TeacherRecord,
                outputs: TeacherOutputsInfo | None, model: dict[str, Any], steps: int, warmup: int,
                hooks: tuple[TrainingHook, ...] = (), patience: int | None = None) -> DistillJob:
    """A distillation job from the teacher (its cached outputs, or live) with `p`'s recipe."""
    d = ctx.config.distill
    return DistillJob(
        task=task, data_path=data_path, teacher_path=None if outputs else teacher.path,
        teacher_outputs_path=outputs.path if outputs else None, model=model, steps=steps, batch_size=d.batch_size,
        warmup=warmup, lr=p.lr, optimizer=p.optimizer, seed=ctx.config.seed,
        weights=LossWeights(temperature=p.temperature, lam=p.lam, beta=p.beta), val_tokens=d.val_tokens,
        threads=max(1, int(ctx.config.resources.cpus_per_worker)), weight_decay=p.weight_decay, temperature_end=d.temperature_end,
        layer_map=d.layer_map, hooks=hooks, precision=d.precision, patience=patience, check_every=d.check_every,
        checkpoint_every=d.checkpoint_every,
    )


def _job_key(kind: str, source: str, job: DistillJob, ctx: SweepContext, *extra: Any) -> str:
    recipe = {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name not in _NOT_RECIPE}
    return content_key(kind, source, recipe, ctx.config.resources.num_workers, job.task.fingerprint(), *extra)


def _trained(ctx: SweepContext, job: DistillJob, start: nn.Module, masks: Mapping[str, torch.Tensor], *, name: str, key: str,
             check: Check | None = None, extras: Mapping[str, Any] | None = None) -> Callable[[Path], None]:
    """The cache entry's builder: train `job` from `start` (the checkpoint it starts from carries the masks it
    keeps and what its hooks start from) and keep student.pt and distill.json. In the trial's own process the
    training state is checkpointed under `train/in_process/<key>` in this node's copy of the storage, so the
    same student, trained again after its process died, goes on from there."""

    def build(tmp: Path) -> None:
        init = tmp / "init.pt"
        save_checkpoint(init, job.task.describe(start), start.state_dict(), masks=dict(masks), **dict(extras or {}))
        where = str(init) if ctx.config.distill_in_trial else ctx.storage.publish(init)  # Ray Train workers read it on their nodes
        r = ctx.config.resources
        try:
            result = run_distill(dataclasses.replace(job, init_path=where), name=name, storage_path=ctx.storage.location("train"),
                                 num_workers=r.num_workers, use_gpu=r.use_gpu, cpus_per_worker=r.cpus_per_worker,
                                 placement_strategy=r.placement_strategy, in_process=ctx.config.distill_in_trial, check=check,
                                 checkpoints=ctx.storage.path("train", "in_process", key) if ctx.config.distill_in_trial else None)
        finally:
            ctx.storage.discard(init)
        save_checkpoint(tmp / "student.pt", job.model, result.state_dict, masks=dict(masks))
        (tmp / "distill.json").write_text(to_json(result.record))

    return build


def load_student(task: Task, location: str | Path) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A student checkpoint (a path or storage location): the model and the keep-masks it trained under (empty if none)."""
    model, extras = load_checkpoint(location, task.build_model)
    return model, extras.get("masks", {})


def distill_student(ctx: SweepContext, task: Task, p: TrialParams, *, data: Any, data_path: str, teacher: TeacherRecord,
                    outputs: TeacherOutputsInfo | None, teacher_model: nn.Module, trial_id: str,
                    check: Check | None = None) -> tuple[Path, bool]:
    """The distilled (float) student for `p`, trained now or reused: a later trial that differs only in
    post-training parameters (sparsity, bits) gets the earlier trial's student without training. Gradual
    pruning and QAT happen here (the pipeline's distillation hooks), so then sparsity or bits are part of
    the student. A `check` that stops training (`EarlyStopped`) leaves no cache entry behind.

    Returns (cache entry holding student.pt and distill.json, hit).
    """
    cfg = ctx.config
    start = task.student(cfg, p, data, teacher_model)
    job = distill_job(ctx, task, p, data_path=data_path, teacher=teacher, outputs=outputs, model=task.describe(start),
                      steps=p.steps or cfg.distill.steps, warmup=cfg.distill.warmup, patience=cfg.distill.patience,
                      hooks=cfg.pipeline.distill_hooks(p.by_name()))
    key = _job_key("student", outputs.key if outputs else teacher.key, job, ctx, teacher.key)
    return ctx.storage.entry(Cache.STUDENTS, key, _trained(ctx, job, start, {}, name=f"distill-{trial_id}", key=key, check=check))


def recover_student(ctx: SweepContext, task: Task, p: TrialParams, pruned: PruneResult, source: str, *, data_path: str,
                    teacher: TeacherRecord, outputs: TeacherOutputsInfo | None, trial_id: str) -> tuple[PruneResult, bool]:
    """Recovery fine-tuning after one-shot pruning: `prune.recovery_steps` of distillation from the pruned model,
    pruned weights held at zero (structured: the smaller shape kept), with the techniques that act during
    distillation (QAT). Keyed by the model it starts from (`source`: the student's or teacher's key), the prune
    method and the sparsity."""
    method = ctx.config.pipeline.prune
    steps = method.recovery_steps
    hooks = ((HoldMasks(),) if pruned.masks else ()) + ctx.config.pipeline.distill_hooks(p.by_name())
    job = distill_job(ctx, task, p, data_path=data_path, teacher=teacher, outputs=outputs, model=task.describe(pruned.model),
                      steps=steps, warmup=min(ctx.config.distill.warmup, steps // 10), hooks=hooks)
    key = _job_key("recovered", source, job, ctx, method.to_raw() | {"sparsity": p.sparsity})
    entry, hit = ctx.storage.entry(Cache.STUDENTS, key, _trained(ctx, job, pruned.model, pruned.masks, name=f"recover-{trial_id}", key=key))
    model, masks = load_student(task, entry / "student.pt")
    return PruneResult(model.train(False), masks), hit


def tune_quantized(ctx: SweepContext, task: Task, p: TrialParams, model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor],
                   quantized: Quantized, *, data_path: str, teacher: TeacherRecord, outputs: TeacherOutputsInfo | None,
                   trial_id: str) -> tuple[nn.Module, bool]:
    """Recovery fine-tuning after quantization: `quantize.recovery_steps` of distillation from the quantized model
    (without a distill stage: the teacher's own compressed copy against its float outputs), pruned weights held
    at zero, the way the quantize method trains (`QuantizeMethod.recovery`: QAT from step 0 for a grid; a
    codebook's centroids, assignments fixed). Keyed by the quantized model's weights, its masks and the recipe."""
    method = ctx.config.pipeline.quantize
    steps = method.recovery_steps
    hook, extras = method.recovery(spec, quantized)
    job = distill_job(ctx, task, p, data_path=data_path, teacher=teacher, outputs=outputs, model=task.describe(model),
                      steps=steps, warmup=min(ctx.config.distill.warmup, steps // 10),
                      hooks=((HoldMasks(),) if masks else ()) + (hook,))
    start = tensors_digest(model.state_dict()), tensors_digest(masks)
    key = _job_key("quantize_recovered", outputs.key if outputs else teacher.key, job, ctx, *start)
    entry, hit = ctx.storage.entry(Cache.STUDENTS, key, _trained(ctx, job, model, masks, name=f"tune-{trial_id}", key=key, extras=extras))
    tuned, _ = load_student(task, entry / "student.pt")
    return tuned.train(False), hit
