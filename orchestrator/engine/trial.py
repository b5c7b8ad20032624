"""One trial, top to bottom: [premeasure ->] distill -> prune [-> recover] -> quantize [-> recover] -> export -> measure.

`tune_trial` is the Ray Tune function (the driver). It distils in its own process (one worker) or starts a
Ray Train run (DDP), unless an earlier trial already distilled the same student (`engine.students`); then
it does the cheap stages itself and reports measured metrics. Everything model- or data-specific is asked of
the sweep's `Task`, everything technique-specific of the pipeline's techniques.
"""

from __future__ import annotations

import copy
import errno
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.core.errors import no_space
from orchestrator.core.fidelity import promoted, rung_steps
from orchestrator.core.keys import content_key
from orchestrator.core.stopping import EarlyStopped, stop_reason
from orchestrator.engine.compress import Compressed, compress
from orchestrator.engine.context import SweepContext
from orchestrator.engine.evaluation import measure_model, with_registered
from orchestrator.engine.exports import export_files, export_tags, runnable
from orchestrator.engine.prepare import PreparedData, TeacherOutputsInfo
from orchestrator.engine.service import measure_on_service
from orchestrator.engine.students import distill_student, load_student, recover_student, tune_quantized
from orchestrator.io.artifact import ARTIFACT
from orchestrator.io.checkpoints import load_frozen
from orchestrator.io.records import RUNG, RUNG_POINT, STUDENT_TAG, CacheStage, DistillRecord, Status, TeacherRecord, TrialOutcome, from_json
from orchestrator.io.storage import Cache, cache_root, fetch
from orchestrator.io.sweep_files import SweepFiles
from orchestrator.tasks.base import Task, TrialParams
from orchestrator.techniques.base import PruneResult
from orchestrator.techniques.quantize import Calibration, Quantized, QuantSpec, load_quantized, save_quantized
from orchestrator.training.loop import Check


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a sweep shares: small, picklable; big things are locations in storage."""

    ctx: SweepContext  # the sweep's resolved settings: storage, objectives, config
    task: Task
    data: PreparedData
    teacher: TeacherRecord
    teacher_outputs: TeacherOutputsInfo | None  # None: distillation runs the teacher live (`distill.teacher_outputs`)
    sweep_id: str  # its files are under sweeps/<sweep id> in the storage
    service: Any = None  # the sweep's measurement service (a Ray actor handle, `engine.service`)


@dataclass
class _Trial:
    """One trial's running state: what it measured, reused and learned so far."""

    tc: TrialContext
    params: TrialParams
    trial_id: str
    data: Any
    teacher: nn.Module  # the uncompressed teacher (the pipeline may compress a copy of it)
    workdir: Path
    hits: dict[CacheStage, bool]
    timings: dict[str, float]
    tags: dict[str, str]


def tune_trial(config: dict[str, Any], tc: TrialContext) -> None:
    """The Ray Tune function: one trial's driver."""
    import ray.tune

    trial_id = ray.tune.get_context().get_trial_id()
    try:
        outcome = run_pipeline(TrialParams.from_config(config), tc, trial_id=trial_id, report=ray.tune.report)
    except Exception as e:  # torch, SQLite and others report a full disk in words of their own: said plainly here
        full = [str(p) for p in (tc.ctx.storage.root, cache_root()) if _nearly_full(p)]
        if full and not no_space(e):
            raise OSError(errno.ENOSPC, f"No space left on device under {full[0]} ({type(e).__name__}: {e})") from e
        raise
    ray.tune.report(outcome.report(tc.ctx.objectives.names))


def _nearly_full(path: Path) -> bool:
    """Whether the filesystem of `path` (or of its nearest existing parent) has less than 1 MiB left."""
    while not path.exists() and path != path.parent:
        path = path.parent
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize < 1 << 20


def run_pipeline(params: TrialParams, tc: TrialContext, *, trial_id: str, report: Callable[[dict], None] | None = None) -> TrialOutcome:
    """Distill, prune, quantize, export and measure one student; returns its outcome (all measured).

    With `early_stopping` on, size and latency are measured first and distillation may stop early: the
    outcome is then STOPPED, says why, and holds no held-out metrics. `report` receives the intermediate
    validation results.
    """
    ctx, task = tc.ctx, tc.task
    began = {"trial_started_at": time.time()}  # unix seconds; with `trial_ended_at`, the trial function's wall time
    workdir = ctx.storage.path("sweeps", tc.sweep_id, "trials", trial_id)  # this node's copy
    workdir.mkdir(parents=True, exist_ok=True)
    hits = {CacheStage.TEACHER: tc.teacher.cache_hit}
    if tc.teacher_outputs is not None:
        hits[CacheStage.TEACHER_OUTPUTS] = tc.teacher_outputs.cache_hit
    trial = _Trial(tc, params, trial_id, task.load_data(fetch(tc.data.path)), load_frozen(tc.teacher.path, task.build_model),
                   workdir, hits, {}, {"node": _node()})
    stops = ctx.config.early_stopping.enabled or ctx.config.fidelity.enabled
    pre, check = _premeasured(trial, report) if stops else ({}, None)
    t = time.perf_counter()
    try:
        student, source, distilled = _distilled(trial, check)
    except EarlyStopped as stop:
        trial.timings["time_distill_s"] = time.perf_counter() - t
        return TrialOutcome(status=Status.STOPPED, metrics={"val_accuracy": stop.scores["accuracy"], **pre, **began,
                                                            "trial_ended_at": time.time()},
                            cache_hits={**hits, CacheStage.DISTILL: False}, timings=_with_total(trial.timings),
                            stop_reason=stop.reason, stopped_at_step=stop.step, tags=trial.tags)
    c = _compressed(trial, student, source)
    files = export_files(ctx, task, trial.data, workdir / ARTIFACT, trial.timings)  # for other runtimes
    exports = {fmt: ctx.storage.publish(e.path) for fmt, e in files.items()}
    trial.tags.update(export_tags(files, exports))
    t = time.perf_counter()
    location = ctx.storage.publish(workdir / ARTIFACT)  # where the measurement service, the tracking and a user read it
    m = measure_model(task, c.model, location, trial.data, ctx, service=tc.service, counts=(c.params, c.nonzero_params),
                      runnable=runnable(ctx.config, exports))
    trial.timings["time_measure_s"] = time.perf_counter() - t - m.wait_seconds
    trial.timings["time_measure_wait_s"] = trial.timings.get("time_measure_wait_s", 0.0) + m.wait_seconds  # orchestration, not a stage
    trained = {} if distilled is None else {"val_accuracy": distilled.val_accuracy, "val_loss": distilled.val_loss,
                                            "distill_steps": distilled.steps, "distill_paused_s": distilled.paused_seconds,
                                            # a reused student: the training it did not repeat
                                            "distill_saved_s": distilled.train_seconds if hits.get(CacheStage.DISTILL) else 0.0}
    metrics = {**m.metrics, "sparsity_measured": c.sparsity, "int8_layers": float(len(c.int8_layers)),
               **({"effective_bits": c.effective_bits} if c.effective_bits is not None else {}),
               **{f"{fmt}_mb": e.size_bytes / 1e6 for fmt, e in files.items()},
               "compression_ratio": tc.teacher.size_bytes / c.size_bytes, **_retained(m.metrics, tc), **trained, **pre,
               **began, "trial_ended_at": time.time()}
    return TrialOutcome(status=Status.COMPLETED, metrics=metrics, cache_hits=hits, timings=_with_total(trial.timings),
                        artifact=location, warnings=m.warnings, tags=trial.tags, exports=exports,
                        curves=distilled.curves if distilled is not None else {})


def _with_total(timings: dict[str, float]) -> dict[str, float]:
    """The timings and `time_stages_s`, their sum (the recovery's training loop is not split out; its worker
    start-up is small in-process); the distillation's wall time and time queued for the service excluded."""
    return {**timings, "time_stages_s": sum(v for k, v in timings.items() if k not in ("time_distill_fit_s", "time_measure_wait_s"))}


def _retained(metrics: dict[str, float], tc: TrialContext) -> dict[str, float]:
    """`<name>_retained` and `test_<name>_retained`: the student's share of the teacher's held-out scores that
    are maximised (the teacher measured under the sweep's own settings)."""
    teacher, out = tc.teacher.metrics, {}
    for o in tc.ctx.objectives.retained():
        for name in (o.name, f"test_{o.name}"):
            if name in metrics and teacher.get(name):
                out[f"{name}_retained"] = metrics[name] / teacher[name]
    return out


def _distilled(trial: _Trial, check: Check | None) -> tuple[nn.Module, str, DistillRecord | None]:
    """(the model to compress, the cache key it came from, its distillation's record): the student, distilled now
    or reused; without a distill stage the teacher's own copy."""
    tc, cfg = trial.tc, trial.tc.ctx.config
    if not cfg.pipeline.distill:
        return copy.deepcopy(trial.teacher), tc.teacher.key, None  # `trial.teacher` stays the uncompressed reference
    t = time.perf_counter()
    entry, hit = distill_student(tc.ctx, tc.task, trial.params, data=trial.data, data_path=tc.data.path, teacher=tc.teacher,
                                 outputs=tc.teacher_outputs, teacher_model=trial.teacher, trial_id=trial.trial_id, check=check)
    record = from_json(DistillRecord, (entry / "distill.json").read_text())
    trial.timings["time_distill_s"] = 0.0 if hit else record.train_seconds
    trial.timings["time_distill_fit_s"] = time.perf_counter() - t  # includes Ray Train worker start-up
    trial.hits[CacheStage.DISTILL] = hit
    if record.worker_nodes:  # when it was trained (a reused student keeps its own)
        trial.tags["distill.worker_nodes"] = ",".join(record.worker_nodes)
        trial.tags["distill.worker_weights"] = ",".join(record.worker_weights)  # one digest per rank
    if record.resumed_from:  # a worker was lost: its group restarted from this step's checkpoint
        trial.tags["distill.resumed_from_step"] = str(record.resumed_from)
    trial.tags[STUDENT_TAG] = entry.name  # the trials that share a student share this key (`fanout`)
    student, _ = load_student(tc.task, entry / "student.pt")
    return student, entry.name, record


def _compressed(trial: _Trial, student: nn.Module, source: str) -> Compressed:
    """The pipeline's prune and quantize stages on `student` (`source`: its cache key), with the trial's recovery
    fine-tuning, calibration and cache, and its artifact written."""
    tc, ctx = trial.tc, trial.tc.ctx
    kw = dict(data_path=tc.data.path, teacher=tc.teacher, outputs=tc.teacher_outputs, trial_id=trial.trial_id)

    def recover(pruned: PruneResult) -> PruneResult:
        result, trial.hits[CacheStage.RECOVER] = recover_student(ctx, tc.task, trial.params, pruned, source, **kw)
        return result

    def tune(model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor], quantized: Quantized) -> nn.Module:
        tuned, trial.hits[CacheStage.QUANTIZE_RECOVER] = tune_quantized(ctx, tc.task, trial.params, model, spec, masks, quantized, **kw)
        return tuned

    return compress(student.eval(), ctx.config.pipeline, trial.params.by_name(), artifact=trial.workdir / ARTIFACT,
                    meta=tc.task.meta(trial.data), entropy=ctx.config.export.entropy, recover=recover, tune=tune,
                    calibration=_calibration(trial), timings=trial.timings, encodings=ctx.encodings)


def _calibration(trial: _Trial) -> Calibration:
    """Training inputs drawn with the sweep's seed, and the storage's cache of a calibrating quantizer's results,
    keyed by what the method names and the data, seed and task."""
    tc, ctx = trial.tc, trial.tc.ctx

    def inputs(n: int) -> torch.Tensor:
        return tc.task.batch(trial.data, "train", n, torch.Generator().manual_seed(ctx.config.seed))[0]

    def cached(parts: tuple[Any, ...], build: Callable[[], Quantized]) -> Quantized:
        key = content_key("gptq", *parts, tc.data.key, ctx.config.seed, tc.task.fingerprint())
        entry, trial.hits[CacheStage.GPTQ] = ctx.storage.entry(Cache.GPTQ, key, lambda tmp: save_quantized(build(), tmp / "gptq.pt"))
        return load_quantized(entry / "gptq.pt")

    def tables(parts: tuple[Any, ...], build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        key = content_key("sensitivity", *parts, tc.data.key, ctx.config.seed, tc.task.fingerprint())
        entry, trial.hits[CacheStage.SENSITIVITY] = ctx.storage.entry(
            Cache.SENSITIVITY, key, lambda tmp: np.savez(tmp / "sensitivity.npz", **build()))
        with np.load(entry / "sensitivity.npz") as table:
            return dict(table)

    return Calibration(inputs=inputs, cached=cached, tables=tables)


def _premeasured(trial: _Trial, report: Callable[[dict], None] | None) -> tuple[dict[str, float], Check]:
    """The figures of the trial's compressed student that do not depend on its weights (size, latency, memory),
    before it is trained: an untrained student of that shape, pruned, quantized and exported the same way,
    measured by the measurement service (size to within the choice between mask and index encodings); they
    come with a `pre_` prefix. And the check that stops its distillation once the front makes it hopeless."""
    tc, ctx = trial.tc, trial.tc.ctx
    t = time.perf_counter()
    artifact = trial.workdir / "untrained.orc"
    model = tc.task.student(ctx.config, trial.params, trial.data, trial.teacher)
    compress(model, ctx.config.pipeline, trial.params.by_name(), artifact=artifact, meta=tc.task.meta(trial.data),
             entropy=ctx.config.export.entropy, encodings=ctx.encodings)
    figures = ctx.objectives.measured("artifact", SimpleNamespace(size_bytes=artifact.stat().st_size))
    files = export_files(ctx, tc.task, trial.data, artifact, measured_only=True)
    exports = {fmt: ctx.storage.publish(e.path) for fmt, e in files.items()}
    target, waited = measure_on_service(tc.service, ctx.storage.publish(artifact), runnable(ctx.config, exports))
    for e in [artifact, *(e.path for e in files.values())]:
        ctx.storage.discard(e)
    figures.update({k: v for k, v in target.items() if k in ctx.objectives})
    trial.timings["time_premeasure_s"] = time.perf_counter() - t - waited
    trial.timings["time_measure_wait_s"] = waited
    pre = {f"pre_{k}": v for k, v in figures.items()}
    return pre, _early_stop_check(trial, figures, pre, report)


def _early_stop_check(trial: _Trial, fixed: dict[str, float], pre: dict[str, float], report: Callable[[dict], None] | None) -> Check:
    """The checks that may stop the trial's distillation: at each rung of successive halving (`fidelity`), rank
    the student among those that reached it (`_judge_at_rung`); every `early_stopping.every` steps, stop if the
    front makes it hopeless (`core.stopping.stop_reason`). Each check reports its validation scores first."""
    tc, ctx = trial.tc, trial.tc.ctx
    es, fid, names = ctx.config.early_stopping, ctx.config.fidelity, ctx.objectives.names
    files = SweepFiles(ctx.storage, tc.sweep_id)
    steps = trial.params.steps or ctx.config.distill.steps
    rungs = rung_steps(steps, fid.eta, fid.rungs) if fid.enabled else ()

    def callback(step: int, val: dict[str, float]) -> None:
        val = with_registered(val, ctx.objectives)
        progress = {"distill_step": step, "val_accuracy": val["accuracy"], **pre}
        if step in rungs:
            _judge_at_rung(trial, files, rungs.index(step), step, {**fixed, **val}, progress, report)
        elif report is not None:
            report(progress)
        if es.enabled and step % es.every == 0:
            reason = stop_reason(val, fixed, objectives=ctx.objectives, margin=es.margin, front=files.read_front(names),
                                 constraints=ctx.constraints)
            if reason is not None:
                raise EarlyStopped(step, val, reason)

    val_tokens = max(es.val_tokens if es.enabled else 0, fid.val_tokens if fid.enabled else 0)
    return Check(every=es.every if es.enabled else 0, val_tokens=val_tokens, callback=callback, at=frozenset(rungs))


def _judge_at_rung(trial: _Trial, files: SweepFiles, rung: int, step: int, figures: dict[str, float], progress: dict[str, float],
                   report: Callable[[dict], None] | None) -> None:
    """Rank the student among the points of this rung the sweep has recorded (`core.fidelity.promoted`), report
    its point and the verdict (the driver records them in `rungs.jsonl`), and stop it unless it is promoted."""
    ctx, eta = trial.tc.ctx, trial.tc.ctx.config.fidelity.eta
    names = list(ctx.objectives.names)
    others = [[r.point[n] for n in names] for r in files.read_rungs() if r.rung == rung and r.trial_id != trial.trial_id]
    point = [figures[n] for n in names]
    go_on, place, size = promoted(point, np.array(others, float).reshape(-1, len(names)), ctx.objectives.directions(), eta)
    if report is not None:
        report({**progress, RUNG: rung, "rung_promoted": float(go_on), "rung_place": place, "rung_size": size,
                **{f"{RUNG_POINT}{n}": v for n, v in zip(names, point)}})
    trial.tags["fidelity.rung"] = str(rung)
    if not go_on:
        raise EarlyStopped(step, figures, f"rung {rung + 1} (step {step}): place {place} of {size}, not in the best "
                                          f"{math.ceil(size / eta)} (fidelity.eta {eta})")


def _node() -> str:
    """The Ray node this process runs on (empty outside Ray)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
