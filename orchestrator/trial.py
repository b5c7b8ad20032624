"""One trial, top to bottom: [premeasure ->] distill -> prune [-> recover] -> quantize [-> recover] -> export -> measure.

`tune_trial` is the Ray Tune function (the driver). It distils in its own process (one worker) or starts
a Ray Train run (DDP), unless an earlier trial already distilled the same student (`students`); then it
does the cheap stages itself and reports measured metrics. Everything model- or data-specific is asked
of the sweep's `Task`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from orchestrator import cache
from orchestrator.config import SweepConfig
from orchestrator.evaluation import ARTIFACT, measure_model, with_registered
from orchestrator.objectives import OBJECTIVES, Objective, install, measured
from orchestrator.service import measure_on_service
from orchestrator.outcome import TrialOutcome
from orchestrator.space import ObjectiveConstraints
from orchestrator.stages.compress import Compressed, Quantized, compress
from orchestrator.stages.distill import Check, load_teacher
from orchestrator.stages.gptq import GPTQ_FORMAT, gptq_quantize_
from orchestrator.stages.prune import PruneResult
from orchestrator.stages.quantize import QuantizedTensor, QuantSpec, dequantize, quantizable_weights
from orchestrator.stopping import EarlyStopped, stop_reason
from orchestrator.storage import fetch
from orchestrator.sweep_files import SweepFiles
from orchestrator.students import distill_student, load_checkpoint, recover_student, tune_quantized
from orchestrator.tasks.base import Task, TrialParams
from orchestrator.teacher import PreparedData, TeacherInfo, TeacherOutputsInfo


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: small, picklable; big things are paths into storage."""

    config: SweepConfig
    task: Task
    data: PreparedData
    teacher: TeacherInfo
    teacher_outputs: TeacherOutputsInfo | None  # None: distillation runs the teacher live (`distill.teacher_outputs`)
    sweep_id: str  # its files are under sweeps/<sweep id> in the storage (`config.store`)
    service: Any = None  # the sweep's measurement service (a Ray actor handle, `orchestrator.service`)
    objectives: Mapping[str, Objective] = field(default_factory=dict)  # the driver's objective registry (yours included)


def premeasure(ctx: TrialContext, p: TrialParams, data: Any, teacher: nn.Module, workdir: Path) -> tuple[dict[str, float], float]:
    """The figures of `p`'s compressed student that do not depend on its weights (size, latency, memory),
    before it is trained: an untrained student of that shape, pruned, quantized and exported the same
    way, measured by the measurement service (size to within the choice between mask and index
    encodings). Returns them with a `pre_` prefix, and the seconds queued for the service."""
    cfg, task = ctx.config, ctx.task
    model = task.student(cfg, p, data, teacher)
    artifact = workdir / "untrained.orc"
    compress(model, cfg.pipeline, sparsity=p.sparsity, bits=p.bits, group_size=p.group_size, artifact=artifact, meta=task.meta(data),
             entropy=cfg.export.entropy)
    figures = measured(OBJECTIVES, "artifact", SimpleNamespace(size_bytes=artifact.stat().st_size))
    target, waited = measure_on_service(ctx.service, cfg.store.publish(artifact))
    cfg.store.discard(artifact)
    figures.update({k: v for k, v in target.items() if k in OBJECTIVES})
    return {f"pre_{k}": v for k, v in figures.items()}, waited


def _early_stop_check(cfg: SweepConfig, ctx: TrialContext, pre: dict[str, float], report: Callable[[dict], None] | None) -> Check:
    """Every `early_stopping.every` steps: report the validation scores, then stop if the front makes the
    student hopeless (`stopping.stop_reason`)."""
    es = cfg.early_stopping
    limits = ObjectiveConstraints(cfg.constraints)
    fixed = {k[len("pre_"):]: v for k, v in pre.items()}

    def callback(step: int, val: dict[str, float]) -> None:
        val = with_registered(val)
        if report is not None:
            report({"distill_step": step, "val_accuracy": val["accuracy"], **pre})
        reason = stop_reason(val, fixed, objectives=cfg.objectives, margin=es.margin,
                             front=SweepFiles(cfg.store, ctx.sweep_id).read_front(cfg.objectives), constraints=limits)
        if reason is not None:
            raise EarlyStopped(step, val["accuracy"], reason)

    return Check(every=es.every, val_tokens=es.val_tokens, callback=callback)


def run_pipeline(
    params: TrialParams, ctx: TrialContext, *, trial_id: str, report: Callable[[dict], None] | None = None
) -> TrialOutcome:
    """Distill, prune, quantize, export and measure one student; returns its outcome (all measured).

    With `early_stopping` on, size and latency are measured first and distillation may stop early: the
    outcome is then STOPPED, says why, and holds no held-out metrics. `report` receives the intermediate
    validation results.
    """
    cfg, p, task = ctx.config, params, ctx.task
    data = task.load_data(fetch(ctx.data.path))
    timings: dict[str, float] = {}
    workdir = cfg.store.path("sweeps", ctx.sweep_id, "trials", trial_id)  # this node's copy
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(task, ctx.teacher.path)
    hits = {"teacher": ctx.teacher.cache_hit}
    if ctx.teacher_outputs is not None:
        hits["teacher_outputs"] = ctx.teacher_outputs.cache_hit
    trained: dict[str, float] = {}  # the float student's validation figures
    curves: dict[str, list[list[float]]] = {}  # its training curves
    tags = {"node": _node()}

    check, pre = None, {}
    if cfg.early_stopping.enabled:
        t = time.perf_counter()
        pre, waited = premeasure(ctx, p, data, teacher, workdir)
        timings["time_premeasure_s"] = time.perf_counter() - t - waited
        timings["time_measure_wait_s"] = waited
        check = _early_stop_check(cfg, ctx, pre, report)

    t = time.perf_counter()
    if cfg.pipeline.distill:
        try:
            entry, hit = distill_student(cfg, task, p, data=data, data_path=ctx.data.path, teacher=ctx.teacher,
                                         outputs=ctx.teacher_outputs, teacher_model=teacher, trial_id=trial_id, check=check)
        except EarlyStopped as stop:
            timings["time_distill_s"] = time.perf_counter() - t
            return TrialOutcome(
                status="STOPPED", metrics={"val_accuracy": stop.val_accuracy, **pre}, cache_hits={**hits, "distill": False},
                timings={**timings, "time_stages_s": sum(v for k, v in timings.items() if k != "time_measure_wait_s")},
                stop_reason=stop.reason,
                stopped_at_step=stop.step,
                tags=tags,
            )
        distilled = json.loads((entry / "distill.json").read_text())
        timings["time_distill_s"] = 0.0 if hit else distilled["train_seconds"]
        timings["time_distill_fit_s"] = time.perf_counter() - t  # includes Ray Train worker start-up
        student, _ = load_checkpoint(task, entry / "student.pt")
        source = entry.name
        trained = {"val_accuracy": distilled["val_accuracy"], "val_loss": distilled["val_loss"],
                   "distill_steps": distilled.get("steps", math.nan)}  # (an entry of an older version kept no steps)
        hits["distill"] = hit
        curves = distilled.get("curves", {})  # (an entry of an older version kept none)
        if distilled.get("worker_nodes"):  # when it was trained (a reused student keeps its own)
            tags["distill.worker_nodes"] = ",".join(distilled["worker_nodes"])
            tags["distill.worker_weights"] = ",".join(distilled["worker_weights"])  # one digest per rank
        if distilled.get("resumed_from"):  # a worker was lost: its group restarted from this step's checkpoint
            tags["distill.resumed_from_step"] = str(distilled["resumed_from"])
    else:  # the pipeline compresses the teacher itself
        student, source = copy.deepcopy(teacher), ctx.teacher.key  # `teacher` stays the uncompressed reference

    def recover(pruned: PruneResult) -> PruneResult:
        result, hit = recover_student(cfg, task, p, pruned, source, data_path=ctx.data.path, teacher=ctx.teacher,
                                      outputs=ctx.teacher_outputs, trial_id=trial_id)
        hits["recover"] = hit
        return result

    def tune(model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor], quantized: Quantized) -> nn.Module:
        tuned, hit = tune_quantized(cfg, task, p, model, spec, masks, quantized, data_path=ctx.data.path,
                                    teacher=ctx.teacher, outputs=ctx.teacher_outputs, trial_id=trial_id)
        hits["quantize_recover"] = hit
        return tuned

    def gptq(model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor]) -> Quantized:
        quantized, hits["gptq"] = gptq_cached(cfg, task, data, ctx.data.key, model, spec, masks)
        return quantized

    artifact = workdir / ARTIFACT
    c: Compressed = compress(
        student.eval(), cfg.pipeline, sparsity=p.sparsity, bits=p.bits, group_size=p.group_size, artifact=artifact,
        meta=task.meta(data), recover=recover, gptq=gptq, tune=tune, entropy=cfg.export.entropy, timings=timings,
    )

    t = time.perf_counter()
    location = cfg.store.publish(artifact)  # where the measurement service, the tracking and a user read it
    m = measure_model(task, c.model, location, data, cfg, service=ctx.service, counts=(c.params, c.nonzero_params))
    metrics = m.metrics
    timings["time_measure_s"] = time.perf_counter() - t - m.wait_seconds
    timings["time_measure_wait_s"] = timings.get("time_measure_wait_s", 0.0) + m.wait_seconds  # orchestration, not a stage
    metrics["sparsity_measured"] = c.sparsity
    metrics["int8_layers"] = float(len(c.int8_layers))

    metrics.update(
        compression_ratio=ctx.teacher.size_bytes / c.size_bytes,
        accuracy_retained=metrics["accuracy"] / ctx.teacher.accuracy,
        test_accuracy_retained=metrics["test_accuracy"] / ctx.teacher.test_accuracy,
        **trained,
        **pre,
    )
    # stage time: the recovery's training loop is not split out (its worker start-up is small in-process)
    timings["time_stages_s"] = sum(v for k, v in timings.items() if k not in ("time_distill_fit_s", "time_measure_wait_s"))
    return TrialOutcome(status="COMPLETED", metrics=metrics, cache_hits=hits, timings=timings, artifact=location,
                        warnings=m.warnings, tags=tags, curves=curves)


@torch.no_grad()
def gptq_cached(cfg: SweepConfig, task: Task, data: Any, data_key: str, model: nn.Module, spec: QuantSpec,
                masks: dict[str, torch.Tensor]) -> tuple[Quantized, bool]:
    """GPTQ of `model` in place, calibrated on `calibration_windows` training windows (drawn with the sweep's
    seed). Its result is cached under the model's exact weights and masks, the method, bits and group
    size, and the data: a later trial that quantizes the same model the same way reads it back. Returns
    (the integer weights, whether they came from the cache)."""
    method = spec.method
    key = cache.content_key("gptq", GPTQ_FORMAT, cache.tensors_digest(model.state_dict()), cache.tensors_digest(masks),
                            dataclasses.asdict(method), spec.bits, spec.group_size, data_key, cfg.seed, task.fingerprint())

    def build(tmp: Path) -> None:
        windows, _ = task.batch(data, "train", method.calibration_windows, torch.Generator().manual_seed(cfg.seed))
        quantized = gptq_quantize_(copy.deepcopy(model), spec, list(windows.split(32)), masks,
                                   act_order=method.act_order, damping=method.damping)
        torch.save({name: dataclasses.asdict(qt) for name, qt in quantized.items()}, tmp / "gptq.pt")

    entry, hit = cfg.store.entry("gptq", key, build)
    blob = torch.load(entry / "gptq.pt", weights_only=True)
    quantized: Quantized = {name: QuantizedTensor(**fields) for name, fields in blob.items()}
    weights = quantizable_weights(model, embeddings=method.embeddings)
    for name, qt in quantized.items():
        weights[name].copy_(dequantize(qt, masks.get(name)))
    return quantized, hit


def _node() -> str:
    """The Ray node this process runs on (empty outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


def tune_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Ray Tune function: one trial's driver."""
    import ray.tune

    install(ctx.objectives)
    trial_id = ray.tune.get_context().get_trial_id()
    outcome = run_pipeline(TrialParams.from_config(config), ctx, trial_id=trial_id, report=ray.tune.report)
    ray.tune.report(outcome.report(ctx.config.objectives))
