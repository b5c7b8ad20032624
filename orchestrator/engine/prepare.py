"""What a sweep prepares once, before its trials, each cached in storage under a hash of what determines it:
the task's data, the teacher (trained or loaded, exported), the measurement service with the teacher
measured on it (the teacher's latency is the service's reference), and the teacher's outputs on a pool of
training examples. `prepared` is the `with` block the trials run inside: the service holds its resources
until it ends."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from orchestrator.config.schema import SweepConfig
from orchestrator.core.errors import ConfigError
from orchestrator.core.fronts import reference_point
from orchestrator.core.keys import content_key
from orchestrator.core.losses import layer_map
from orchestrator.core.space import Fixed
from orchestrator.engine.context import SweepContext
from orchestrator.engine.evaluation import measure_model
from orchestrator.engine.service import Replicas, start_service, stop_service
from orchestrator.io.artifact import ARTIFACT, export
from orchestrator.io.checkpoints import load_frozen, save_checkpoint
from orchestrator.io.records import TeacherBuild, TeacherMeasurement, TeacherOutputsRecord, TeacherRecord, from_json, to_json
from orchestrator.io.storage import Cache, fetch
from orchestrator.tasks.base import Task
from orchestrator.training.job import DistillJob, DistillResult
from orchestrator.training.launch import run_distill
from orchestrator.training.teacher_outputs import compute_teacher_outputs, pool_precision

log = logging.getLogger("orchestrator")


@dataclass(frozen=True)
class PreparedData:
    path: str  # location of the task's stored data (`Task.load_data` of `io.storage.fetch(path)`)
    key: str  # its content hash


@dataclass(frozen=True)
class TeacherOutputsInfo:
    key: str  # content hash of the teacher, the pool of examples and what is kept: its cache entry
    path: str  # location of the `TeacherOutputs` file in storage
    cache_hit: bool  # reused from an earlier sweep
    seconds: float  # time the teacher took to produce them when they were built
    size_bytes: int
    examples: int = 0  # in the pool
    precision: str = "fp32"  # of the teacher's pass over the pool (`distill.pool_precision`)


@dataclass(frozen=True)
class Prepared:
    data: PreparedData
    teacher: TeacherRecord
    outputs: TeacherOutputsInfo | None  # None: distillation runs the teacher live (`distill.teacher_outputs`)
    seconds: float  # wall time of the teacher phase
    service: Replicas  # the measurement service
    service_where: list[dict[str, Any]]  # each replica's node, cores and device
    reference: dict[str, float]  # the hypervolume's reference point, from the sweep's settings and the teacher


@contextlib.contextmanager
def prepared(ctx: SweepContext, task: Task) -> Iterator[Prepared]:
    """The task's data, the teacher, the measurement service (the teacher measured on it first) and (with
    `distill.teacher_outputs: cached`) the teacher's outputs (see the module docstring)."""
    data = prepare_data(ctx, task)
    started = time.perf_counter()
    steps = task.teacher_steps(ctx.config)
    log.info("teacher (task %s): %s ...", task.name, f"{steps} training steps" if steps else "as given")
    key, entry, hit = build_teacher(ctx, task, data)
    # its replicas start (a process each) while the teacher's measurements are read from storage, when they are
    # there, and its outputs computed; a teacher measured now waits for them first
    service = start_service(ctx, task, data.path, ctx.storage.located(entry / ARTIFACT), wait=False)
    try:
        teacher = measure_teacher(ctx, task, data, key, entry, hit, service)
        check_teacher(ctx, task, teacher, data)
        reference = reference_point(ctx.objectives, ctx.config.reference_point.values, teacher.metrics, source=ctx.config.source)
        outputs = teacher_outputs(ctx, task, teacher, data) if ctx.config.distill.teacher_outputs == "cached" else None
        service.ready().set_reference_ms(teacher.latency_ms)
        _log_teacher(ctx, task, teacher, outputs)
        yield Prepared(data, teacher, outputs, time.perf_counter() - started, service, service.where(), reference)
    finally:
        stop_service(service)


def prepare_data(ctx: SweepContext, task: Task) -> PreparedData:
    """The task's data, stored once under a hash of its content."""
    key = task.data_key(ctx.config)
    entry, _ = ctx.storage.entry(Cache.DATA, key, lambda d: task.write_data(ctx.config, d / "data.pt"))
    return PreparedData(path=ctx.storage.located(entry / "data.pt"), key=key)


def _train_teacher(ctx: SweepContext, job: DistillJob, key: str, cpus: float) -> DistillResult:
    """The teacher's training: on a Ray Train worker group, or (one worker) in a Ray task that holds the
    worker's resources, since the sweep's own process holds none."""
    r = ctx.config.resources
    kwargs = dict(storage_path=ctx.storage.location("train"), use_gpu=r.use_gpu, cpus_per_worker=cpus)
    if not ctx.config.distill_in_trial:
        return run_distill(job, name=f"teacher-{key}", num_workers=r.num_workers, placement_strategy=r.placement_strategy, **kwargs)
    remote = ray.remote(num_cpus=cpus, num_gpus=1 if r.use_gpu else 0, max_retries=0)(run_distill)
    return ray.get(remote.remote(job, name="teacher", num_workers=1, in_process=True,
                                 checkpoints=ctx.storage.path("train", "in_process", f"teacher-{key}"), **kwargs))


def build_teacher(ctx: SweepContext, task: Task, data: PreparedData) -> tuple[str, Path, bool]:
    """The task's teacher, trained for `task.teacher_steps` when it asks for training and exported as float32,
    once per storage (keyed by its source, recipe, data, seed and DDP world size, not its thread count).
    Returns (its key, its cache entry on this node: teacher.pt, the artifact, built.json; hit)."""
    cfg = ctx.config
    t, steps = cfg.teacher, task.teacher_steps(cfg)
    recipe = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("cpus_per_worker", "layers", "width", "heads", "model")}
    key = content_key("teacher", task.fingerprint(), task.teacher_fingerprint(cfg), recipe if steps else None,
                      data.key, cfg.seed, cfg.resources.num_workers if steps else None)

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        loaded = task.load_data(fetch(data.path))
        model, train_seconds = task.teacher(cfg, loaded), 0.0
        if steps:
            save_checkpoint(tmp / "init.pt", task.describe(model), model.state_dict())
            cpus = t.cpus_per_worker or cfg.resources.cpus_per_worker
            job = DistillJob(task=task, data_path=data.path, teacher_path=None, teacher_outputs_path=None, model=task.describe(model),
                             steps=steps, batch_size=t.batch_size, warmup=min(100, steps // 10), lr=t.lr, optimizer="adamw",
                             seed=cfg.seed, weights=None, val_tokens=cfg.distill.val_tokens, threads=max(1, int(cpus)),
                             weight_decay=0.01, init_path=ctx.storage.publish(tmp / "init.pt"),  # where every node reads it
                             checkpoint_every=cfg.distill.checkpoint_every)
            result = _train_teacher(ctx, job, key, cpus)
            ctx.storage.discard(tmp / "init.pt")
            model.load_state_dict(result.state_dict)
            train_seconds, t0 = result.record.train_seconds, time.perf_counter()
        save_checkpoint(tmp / "teacher.pt", task.describe(model), model.state_dict())
        export(load_frozen(tmp / "teacher.pt", task.build_model), tmp / ARTIFACT, meta=task.meta(loaded))
        (tmp / "built.json").write_text(to_json(TeacherBuild(train_seconds, train_seconds + time.perf_counter() - t0)))

    entry, hit = ctx.storage.entry(Cache.TEACHERS, key, build)
    return key, entry, hit


REFERENCE_FORMAT = 2  # part of the teacher measurements' key (2: the size is the artifact coded as the students' are)


def measure_teacher(ctx: SweepContext, task: Task, data: PreparedData, key: str, entry: Path, hit: bool, service: Replicas) -> TeacherRecord:
    """The teacher measured like any student, its latency alone (it is the service's reference). The
    measurements are keyed by the weights and every setting they depend on (`measure.*`, the figures asked
    for, the task's evaluation settings), so a sweep that evaluates or times differently measures the cached
    teacher again."""
    cfg = ctx.config
    asked = ctx.objectives.target_names(cfg.figures_asked)
    measure_key = content_key("teacher_measurements", key, dataclasses.asdict(cfg.measure), asked, task.evaluation_settings(cfg),
                              REFERENCE_FORMAT, cfg.export.entropy)
    artifact = ctx.storage.located(entry / ARTIFACT)

    def measure(tmp: Path) -> None:
        t0 = time.perf_counter()
        teacher, loaded = load_frozen(entry / "teacher.pt", task.build_model), task.load_data(fetch(data.path))
        # the size reference: the teacher's float32 artifact coded as every student's is (`export.entropy`), so an
        # untouched teacher is 100 % of itself; the plain one's bytes are kept beside it
        export(teacher, tmp / "reference.orc", meta=task.meta(loaded), entropy=cfg.export.entropy)
        service.ready()
        result = measure_model(task, teacher, artifact, loaded, ctx, service=service, sized=tmp / "reference.orc")
        result.metrics["size_bytes_plain"] = float(fetch(artifact).stat().st_size)
        (tmp / "reference.orc").unlink()
        with torch.inference_mode():
            result.metrics["output_classes"] = float(teacher(task.example(loaded))[0].shape[-1])
        seconds = time.perf_counter() - t0 - result.wait_seconds
        (tmp / "teacher.json").write_text(to_json(TeacherMeasurement(result.metrics, tuple(result.warnings), seconds)))

    measured, measure_hit = ctx.storage.entry(Cache.TEACHER_MEASUREMENTS, measure_key, measure)
    return TeacherRecord(key=key, path=ctx.storage.located(entry / "teacher.pt"), artifact=artifact, cache_hit=hit,
                         build=from_json(TeacherBuild, (entry / "built.json").read_text()), measure_key=measure_key,
                         measure_cache_hit=measure_hit,
                         measurement=from_json(TeacherMeasurement, (measured / "teacher.json").read_text()))


def check_teacher(ctx: SweepContext, task: Task, teacher: TeacherRecord, data: PreparedData) -> None:
    """What only the teacher tells, before any trial starts: every objective and constraint must be a figure
    this task measures, and `distill.layer_map` must pair layers the teacher has. `ConfigError` otherwise."""
    cfg = ctx.config
    for name in cfg.figures_asked:
        if name not in teacher.metrics:
            where = "objectives" if name in cfg.objectives else "constraints"
            measures = [n for n in ctx.objectives.registered if n in teacher.metrics]
            raise ConfigError(f"{cfg.source}: `{where}` names {name}, which task {task.name} does not measure "
                              f"(its model gives {', '.join(measures)}); choose among those")
    if cfg.distill.layer_map is not None and cfg.params["beta"] != Fixed(0.0):
        model, loaded = load_frozen(teacher.path, task.build_model), task.load_data(fetch(data.path))
        with torch.inference_mode():
            layers = len(model(task.example(loaded), hidden=True)[1])
        for _, t_layer in cfg.distill.layer_map:
            if t_layer >= layers:
                raise ConfigError(f"{cfg.source}: `distill.layer_map` pairs teacher layer {t_layer}, but the teacher has "
                                  f"{layers} (0..{layers - 1})")


def teacher_outputs(ctx: SweepContext, task: Task, teacher: TeacherRecord, data: PreparedData) -> TeacherOutputsInfo:
    """The teacher's outputs: here, or with `use_gpu` in a Ray task that holds a GPU (on a GPU node)."""
    if not ctx.config.resources.use_gpu:
        return build_teacher_outputs(ctx, task, teacher, data)
    cpus = ctx.config.teacher.cpus_per_worker or ctx.config.resources.cpus_per_worker
    remote = ray.remote(num_gpus=1, num_cpus=cpus, max_retries=0)(build_teacher_outputs)
    return ray.get(remote.remote(ctx, task, teacher, data, device="cuda"))


def build_teacher_outputs(ctx: SweepContext, task: Task, teacher: TeacherRecord, data: PreparedData,
                          device: str = "cpu") -> TeacherOutputsInfo:
    """Run the teacher once over a pool of training examples (`SweepConfig.pool_examples`, drawn by the task) on
    `device` and keep its outputs for every trial. Hidden states are kept only when some trial can weigh
    them (`params.beta` not fixed at 0)."""
    cfg, d = ctx.config, ctx.config.distill
    hidden = cfg.params["beta"] != Fixed(0.0)
    layers = _kept_layers(cfg, task, teacher, data) if hidden else None
    precision = pool_precision(d.pool_precision, device)
    key = content_key("teacher_outputs", teacher.key, cfg.pool_examples, cfg.seed, hidden, d.top_k, cfg.task.context,
                      task.fingerprint(), layers, *([precision] if precision != "fp32" else []))  # fp32 keeps the keys it had

    def build(tmp: Path) -> None:
        t, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(max(1, int(cfg.teacher.cpus_per_worker or cfg.resources.cpus_per_worker)))
        try:
            model = load_frozen(teacher.path, task.build_model, device)
            generator = torch.Generator().manual_seed(cfg.seed)
            inputs, targets = task.pool(task.load_data(fetch(data.path)), cfg.pool_examples, generator)
            with torch.inference_mode():
                width = model(inputs[:1].to(device))[0].shape[-1]
            top_k = d.top_k if d.top_k is not None and d.top_k < width else None  # k >= V: all logits
            outputs = compute_teacher_outputs(model, inputs, targets, hidden=hidden, top_k=top_k, layers=layers, precision=precision)
        finally:
            torch.set_num_threads(threads)
        outputs.save(tmp / "teacher_outputs.pt")
        (tmp / "teacher_outputs.json").write_text(to_json(TeacherOutputsRecord(time.perf_counter() - t, len(inputs))))

    entry, hit = ctx.storage.entry(Cache.TEACHER_OUTPUTS, key, build)
    path = entry / "teacher_outputs.pt"
    record = from_json(TeacherOutputsRecord, (entry / "teacher_outputs.json").read_text())
    return TeacherOutputsInfo(key=key, path=ctx.storage.located(path), cache_hit=hit, seconds=record.seconds,
                              size_bytes=path.stat().st_size, examples=record.examples, precision=precision)


def _kept_layers(cfg: SweepConfig, task: Task, teacher: TeacherRecord, data: PreparedData) -> tuple[int, ...] | None:
    """The teacher layers some student of the sweep is mapped to (`distill.layer_map`, else the evenly spaced map
    of every student depth the task says it can have), or None to keep every layer."""
    if cfg.distill.layer_map:
        return tuple(sorted({j for _, j in cfg.distill.layer_map}))
    depths = task.student_depths(cfg)
    if depths is None:
        return None
    with torch.inference_mode():
        depth = len(load_frozen(teacher.path, task.build_model)(task.example(task.load_data(fetch(data.path))), hidden=True)[1])
    return tuple(sorted({j for s in depths for _, j in layer_map(s, depth)}))


def _log_teacher(ctx: SweepContext, task: Task, teacher: TeacherRecord, outputs: TeacherOutputsInfo | None) -> None:
    for warning in teacher.warnings:
        log.warning("teacher: %s", warning)
    held = ", ".join(f"{o.name} {teacher.metrics[o.name]:.4f} (test {teacher.metrics.get('test_' + o.name, float('nan')):.4f})"
                     for o in ctx.objectives.held_out() if o.name in teacher.metrics)
    again = "" if teacher.measure_cache_hit or not teacher.cache_hit else ", measured again for these settings"
    log.info("teacher %s (%s%s): validation %s, %.3f MB, %.3f ms", teacher.key, "cache hit, reused" if teacher.cache_hit
             else "built now", again, held, teacher.size_bytes / 1e6, teacher.latency_ms)
    if outputs is not None:
        log.info("teacher outputs %s (%s): a pool of %s, %.1f MB on disk (memory-mapped), %.1f s of teacher time in %s%s", outputs.key,
                 "cache hit, reused" if outputs.cache_hit else "computed now", task.units.count(outputs.examples, "example"),
                 outputs.size_bytes / 1e6, outputs.seconds, outputs.precision, " (saved)" if outputs.cache_hit else "")
