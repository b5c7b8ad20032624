"""What a sweep prepares once, before its trials, each cached in storage under a hash of what determines
it: the task's data, the teacher (trained or loaded, exported and measured) and the teacher's outputs on
a pool of training examples."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from orchestrator import cache
from orchestrator.storage import fetch
from orchestrator.config import ConfigError, Fixed, SweepConfig
from orchestrator.evaluation import ARTIFACT, measure_model
from orchestrator.objectives import OBJECTIVES, target_names
from orchestrator.stages.distill import DistillJob, DistillResult, load_teacher, run_distill
from orchestrator.stages.export import export
from orchestrator.stages.teacher_outputs import compute_teacher_outputs
from orchestrator.tasks.base import Task


@dataclass(frozen=True)
class PreparedData:
    path: str  # location of the task's stored data (`Task.load_data` of `storage.fetch(path)`)
    key: str  # its content hash


@dataclass(frozen=True)
class TeacherInfo:
    key: str  # content hash of the teacher's source, recipe and data: its weights' cache entry
    path: str  # location of its checkpoint (description + state_dict) in storage
    cache_hit: bool  # its weights reused from an earlier sweep
    accuracy: float
    perplexity: float  # NaN for tasks that have none
    size_bytes: int  # its exported float32 artifact
    latency_ms: float
    params: int
    train_seconds: float  # time inside its training loop when it was built
    build_seconds: float  # time inside its stages then: training loop and export
    measure_key: str = ""  # content hash of the weights and every setting its measurements depend on
    measure_cache_hit: bool = False  # its measurements reused (same weights, same evaluation and timing settings)
    measure_seconds: float = 0.0  # time its measurement took when it was measured
    test_accuracy: float = math.nan  # on the test split (reported only; `accuracy` is on validation, as for trials)
    test_perplexity: float = math.nan
    metrics: Mapping[str, float] = field(default_factory=dict)  # everything measured, by name (reference points read it)
    artifact: str = ""  # location of its exported float32 artifact: the measurement service's reference model
    warnings: tuple[str, ...] = ()  # figures measured with less than asked

    @property
    def seconds_now(self) -> float:
        """Stage time this sweep spent on the teacher (what it did not reuse)."""
        return (0.0 if self.cache_hit else self.build_seconds) + (0.0 if self.measure_cache_hit else self.measure_seconds)


@dataclass(frozen=True)
class TeacherOutputsInfo:
    key: str  # content hash of the teacher, the pool of examples and what is kept: its cache entry
    path: str  # location of the `TeacherOutputs` file in storage
    cache_hit: bool  # reused from an earlier sweep
    seconds: float  # time the teacher took to produce them when they were built
    size_bytes: int


def prepare_data(cfg: SweepConfig, task: Task) -> PreparedData:
    """The task's data, stored once under a hash of its content."""
    key = task.data_key(cfg)
    entry, _ = cfg.store.entry("data", key, lambda d: task.write_data(cfg, d / "data.pt"))
    return PreparedData(path=cfg.store.located(entry / "data.pt"), key=key)


def _train_in_task(cfg: SweepConfig, job: DistillJob, *, cpus: float) -> DistillResult:
    """`run_distill` in-process, inside a Ray task that reserves the worker's resources (the sweep's own
    process holds none): what `launcher: in_trial` means for the teacher, trained before any trial."""
    import ray

    gpus = 1 if cfg.resources.use_gpu else 0
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_distill)
    return ray.get(remote.remote(
        job, name="teacher", storage_path=cfg.store.location("train"), num_workers=1,
        use_gpu=cfg.resources.use_gpu, cpus_per_worker=cpus, in_process=True,
    ))


@dataclass(frozen=True)
class TeacherWeights:
    key: str
    entry: Path  # its cache entry on this node: teacher.pt, the exported artifact, built.json
    cache_hit: bool
    artifact: str  # the artifact's location in storage


def build_teacher(cfg: SweepConfig, task: Task, data: PreparedData) -> TeacherWeights:
    """The task's teacher, trained for `task.teacher_steps` when it asks for training and exported as
    float32 once per storage (keyed by its source, recipe, data, seed and DDP world size, not its thread
    count)."""
    t, steps = cfg.teacher, task.teacher_steps(cfg)
    recipe = {k: v for k, v in dataclasses.asdict(t).items() if k not in ("cpus_per_worker", "layers", "width", "heads", "model")}
    key = cache.content_key("teacher", task.fingerprint(), task.teacher_fingerprint(cfg), recipe if steps else None,
                            data.key, cfg.seed, cfg.resources.num_workers if steps else None)

    def build(tmp: Path) -> None:
        t0 = time.perf_counter()
        loaded = task.load_data(fetch(data.path))
        model = task.teacher(cfg, loaded)
        description = task.describe(model)
        train_seconds = 0.0
        if steps:
            torch.save({"config": description, "state_dict": model.state_dict()}, tmp / "init.pt")
            cpus = t.cpus_per_worker or cfg.resources.cpus_per_worker
            job = DistillJob(
                task=task, data_path=data.path, teacher_path=None, teacher_outputs_path=None, model=description,
                steps=steps, batch_size=t.batch_size, warmup=min(100, steps // 10), lr=t.lr, optimizer="adamw",
                seed=cfg.seed, weights=None, val_tokens=cfg.distill.val_tokens, threads=max(1, int(cpus)),
                weight_decay=0.01, init_path=cfg.store.publish(tmp / "init.pt"),  # where every node reads it
                checkpoint_every=cfg.distill.checkpoint_every,
            )
            if cfg.distill_in_trial:  # one worker: a Ray task holding its CPUs (and GPU) runs the loop itself
                result = _train_in_task(cfg, job, cpus=cpus)
            else:
                r = cfg.resources
                result = run_distill(job, name=f"teacher-{key}", storage_path=cfg.store.location("train"),
                                     num_workers=r.num_workers, use_gpu=r.use_gpu, cpus_per_worker=cpus,
                                     placement_strategy=r.placement_strategy)
            cfg.store.discard(tmp / "init.pt")
            model.load_state_dict(result.state_dict)
            train_seconds = result.train_seconds
            t0 = time.perf_counter()
        torch.save({"config": description, "state_dict": model.state_dict()}, tmp / "teacher.pt")
        export(load_teacher(task, tmp / "teacher.pt"), tmp / ARTIFACT, meta=task.meta(loaded))
        built = {"train_seconds": train_seconds, "build_seconds": train_seconds + time.perf_counter() - t0}
        (tmp / "built.json").write_text(json.dumps(built))

    entry, hit = cfg.store.entry("teachers", key, build)
    return TeacherWeights(key, entry, hit, cfg.store.located(entry / ARTIFACT))


def measure_teacher(cfg: SweepConfig, task: Task, data: PreparedData, weights: TeacherWeights, service: Any) -> TeacherInfo:
    """The teacher measured like any student, its latency alone (it is the service's reference). The
    measurements are keyed by the weights and every setting they depend on (`measure.*`, the figures
    asked for, the task's evaluation settings), so a sweep that evaluates or times differently measures
    the cached teacher again."""
    entry = weights.entry
    asked = target_names(cfg.figures_asked)
    measure_key = cache.content_key("teacher_measurements", weights.key, dataclasses.asdict(cfg.measure), asked,
                                    task.evaluation_settings(cfg))

    def measure(tmp: Path) -> None:
        t0 = time.perf_counter()
        teacher, loaded = load_teacher(task, entry / "teacher.pt"), task.load_data(fetch(data.path))
        result = measure_model(task, teacher, weights.artifact, loaded, cfg, service=service)
        with torch.inference_mode():
            result.metrics["output_classes"] = float(teacher(task.example(loaded))[0].shape[-1])
        result.metrics["measure_seconds"] = time.perf_counter() - t0 - result.wait_seconds
        (tmp / "teacher.json").write_text(json.dumps({**result.metrics, "warnings": result.warnings}, indent=1))

    measured, measure_hit = cfg.store.entry("teacher_measurements", measure_key, measure)
    b, m = json.loads((entry / "built.json").read_text()), json.loads((measured / "teacher.json").read_text())
    warnings = tuple(m.pop("warnings", ()))
    return TeacherInfo(
        key=weights.key, path=cfg.store.located(entry / "teacher.pt"), cache_hit=weights.cache_hit, accuracy=m["accuracy"],
        perplexity=m.get("perplexity", float("nan")), test_accuracy=m["test_accuracy"],
        test_perplexity=m.get("test_perplexity", math.nan), size_bytes=int(m["size_bytes"]), latency_ms=m["latency_ms"],
        params=int(m["params"]), train_seconds=b["train_seconds"], build_seconds=b["build_seconds"],
        measure_key=measure_key, measure_cache_hit=measure_hit, measure_seconds=m["measure_seconds"],
        metrics=m, artifact=weights.artifact, warnings=warnings,
    )


def check_measured(cfg: SweepConfig, task: Task, teacher: TeacherInfo) -> None:
    """Every objective and constraint must be a figure this task measures (the teacher, measured like a
    student, says which): `ConfigError` before any trial starts."""
    for name in cfg.figures_asked:
        if name not in teacher.metrics:
            where = "objectives" if name in cfg.objectives else "constraints"
            measures = [n for n in OBJECTIVES if n in teacher.metrics]
            raise ConfigError(f"{cfg.source}: `{where}` names {name}, which task {task.name} does not measure "
                              f"(its model gives {', '.join(measures)}); choose among those")


def build_teacher_outputs(cfg: SweepConfig, task: Task, teacher: TeacherInfo, data: PreparedData,
                          device: str = "cpu") -> TeacherOutputsInfo:
    """Run the teacher once over a pool of `distill.cache_blocks` training examples (drawn by the task)
    on `device` and keep its outputs for every trial. Hidden states are kept only when some trial can weigh
    them (`params.beta` not fixed at 0)."""
    d = cfg.distill
    hidden = cfg.params["beta"] != Fixed(0.0)
    key = cache.content_key("teacher_outputs", teacher.key, d.cache_blocks, cfg.seed, hidden, d.top_k, cfg.task.context)

    def build(tmp: Path) -> None:
        t, threads = time.perf_counter(), torch.get_num_threads()
        torch.set_num_threads(max(1, int(cfg.teacher.cpus_per_worker or cfg.resources.cpus_per_worker)))
        try:
            model = load_teacher(task, teacher.path, device)
            inputs, targets = task.batch(task.load_data(fetch(data.path)), "train", d.cache_blocks, torch.Generator().manual_seed(cfg.seed))
            with torch.inference_mode():
                width = model(inputs[:1].to(device))[0].shape[-1]
            top_k = d.top_k if d.top_k is not None and d.top_k < width else None  # k >= V: all logits
            outputs = compute_teacher_outputs(model, inputs, targets, hidden=hidden, top_k=top_k)
        finally:
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - t
        outputs.save(tmp / "teacher_outputs.pt")
        (tmp / "teacher_outputs.json").write_text(json.dumps({"seconds": seconds}))  # read back on every hit

    entry, hit = cfg.store.entry("teacher_outputs", key, build)
    path = entry / "teacher_outputs.pt"
    seconds = json.loads((entry / "teacher_outputs.json").read_text())["seconds"]
    return TeacherOutputsInfo(key=key, path=cfg.store.located(path), cache_hit=hit, seconds=seconds,
                              size_bytes=path.stat().st_size)
