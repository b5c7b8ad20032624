"""What a sweep prepares before its trials: the task's data, the teacher, the measurement service (with
the teacher measured on it) and the teacher's outputs."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ray

from orchestrator.config import SweepConfig
from orchestrator.results import reference_point
from orchestrator.service import start_service, stop_service
from orchestrator.tasks import Task
from orchestrator.teacher import (
    PreparedData,
    TeacherInfo,
    TeacherOutputsInfo,
    TeacherWeights,
    build_teacher,
    build_teacher_outputs,
    check_measured,
    measure_teacher,
    prepare_data,
)

log = logging.getLogger("orchestrator")


@dataclass(frozen=True)
class Prepared:
    data: PreparedData
    teacher: TeacherInfo
    outputs: TeacherOutputsInfo | None
    seconds: float  # wall time of the teacher phase
    service: Any  # the measurement service (a Ray actor handle)
    service_where: dict[str, Any]  # its node, cores and device


@contextlib.contextmanager
def prepared(cfg: SweepConfig, task: Task) -> Iterator[Prepared]:
    """The task's data, the teacher, the measurement service (the teacher measured on it first) and (with
    `distill.teacher_outputs: cached`) the teacher's outputs, each cached in storage where it can be. The
    service lives as long as the `with` block: it holds its resources until then."""
    data = prepare_data(cfg, task)
    t = time.perf_counter()
    steps = task.teacher_steps(cfg)
    log.info("teacher (task %s): %s ...", task.name, f"{steps} training steps" if steps else "as given")
    weights = build_teacher(cfg, task, data)
    service = start_service(cfg, task, data.path, weights.artifact)
    try:
        yield _ready(cfg, task, data, weights, service, started=t)
    finally:
        stop_service(service)


def _ready(cfg: SweepConfig, task: Task, data: PreparedData, weights: TeacherWeights, service: Any, *, started: float) -> Prepared:
    """The teacher measured on the service (its latency is then the service's reference) and its outputs."""
    teacher = measure_teacher(cfg, task, data, weights, service)
    check_measured(cfg, task, teacher)
    reference_point(cfg, teacher)  # a reference no trial could beat is a config error, said now
    ray.get(service.set_reference_ms.remote(teacher.latency_ms))
    for warning in teacher.warnings:
        log.warning("teacher: %s", warning)
    outputs = None
    if cfg.distill.teacher_outputs == "cached":
        outputs = _teacher_outputs(cfg, task, teacher, data)
    log.info(
        "teacher %s (%s%s): validation accuracy %.4f (test %.4f), %.3f MB, %.3f ms",
        teacher.key, "cache hit, reused" if teacher.cache_hit else "built now",
        "" if teacher.measure_cache_hit or not teacher.cache_hit else ", measured again for these settings", teacher.accuracy,
        teacher.test_accuracy,
        teacher.size_bytes / 1e6, teacher.latency_ms,
    )
    if outputs is not None:
        log.info(
            "teacher outputs %s (%s): %d examples, %.1f MB, %.1f s of teacher time%s",
            outputs.key, "cache hit, reused" if outputs.cache_hit else "computed now", cfg.distill.cache_blocks,
            outputs.size_bytes / 1e6, outputs.seconds, " (saved)" if outputs.cache_hit else "",
        )
    return Prepared(data, teacher, outputs, time.perf_counter() - started, service, ray.get(service.where.remote()))


def _teacher_outputs(cfg: SweepConfig, task: Task, teacher: TeacherInfo, data: PreparedData) -> TeacherOutputsInfo:
    """The teacher's outputs: here, or with `use_gpu` in a Ray task that holds a GPU (on a GPU node)."""
    if not cfg.resources.use_gpu:
        return build_teacher_outputs(cfg, task, teacher, data)
    cpus = cfg.teacher.cpus_per_worker or cfg.resources.cpus_per_worker
    remote = ray.remote(num_gpus=1, num_cpus=cpus, max_retries=0)(build_teacher_outputs)
    return ray.get(remote.remote(cfg, task, teacher, data, device="cuda"))
