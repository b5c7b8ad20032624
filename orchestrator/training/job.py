"""A distillation (or the teacher's own training) as a job: everything a worker needs, small and picklable;
big things (data, teacher weights, cached teacher outputs, the checkpoint it starts from) travel as
locations in the sweep's storage."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from orchestrator.core.losses import LossWeights
from orchestrator.io.records import DistillRecord
from orchestrator.tasks.base import Task
from orchestrator.techniques.base import TrainingHook


@dataclass(frozen=True)
class DistillJob:
    task: Task  # draws batches, scores validation, builds the model from `model`
    data_path: str  # the task's stored data (`Task.load_data`)
    teacher_path: str | None  # teacher checkpoint, run live every step
    teacher_outputs_path: str | None  # or its outputs, computed once per sweep (`TeacherOutputs`); with
    # neither, the model trains from labels alone (how the teacher itself is built)
    model: dict[str, Any]  # description of the model being trained (`Task.describe`)
    steps: int
    batch_size: int  # per worker
    warmup: int
    lr: float
    optimizer: str
    seed: int  # model init and data order
    weights: LossWeights | None  # None with no teacher
    val_tokens: int  # validation positions (examples) scored at the end (never test)
    threads: int  # torch threads per worker
    weight_decay: float = 0.0
    temperature_end: float | None = None  # anneal T linearly from weights.temperature to this (None: constant)
    layer_map: tuple[tuple[int, int], ...] | None = None  # hidden-state pairs (None: evenly spaced)
    init_path: str | None = None  # start from this checkpoint (config, state_dict, and what the hooks start from)
    hooks: tuple[TrainingHook, ...] = ()  # what the techniques do while it trains (gradual pruning, QAT, held masks, centroids)
    precision: str = "fp32"  # bf16: forward and loss under autocast in bfloat16
    patience: int | None = None  # stop after this many validation checks without a better accuracy (converged)
    check_every: int = 100  # steps between those checks
    checkpoint_every: int = 0  # Ray Train: a checkpoint every this many steps, which a restarted worker group resumes (0: none)


@dataclass(frozen=True)
class DistillResult:
    state_dict: dict[str, torch.Tensor]  # the trained model's weights, on CPU
    record: DistillRecord  # its figures
    fit_seconds: float  # wall time of the whole stage, worker start-up included
