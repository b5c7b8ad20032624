"""The training loop, written once for every task and technique: distillation (and the teacher's own training).

`fit` reads top to bottom: set up the student (from its init checkpoint, with the techniques' hooks
started), the teacher's signal (its cached outputs, or the teacher itself run live) and the hidden-state
projection; then each step draws a batch, computes L = L_soft + λ·L_hard + β·L_hidden (`core.losses`),
steps the optimizer and calls the hooks; every few steps it scores validation (early stopping, convergence)
and checkpoints (Ray Train); at the end it scores validation once more and takes the hooks down. The job's
`Task` draws the batches, scores validation and builds the model from its description; the `session` says
where it runs (`training.sessions`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from orchestrator.core.losses import HiddenProjection, distillation_loss, layer_map
from orchestrator.io.checkpoints import load_frozen
from orchestrator.io.gate import Worker, working
from orchestrator.io.records import DistillRecord
from orchestrator.io.storage import fetch, fetched_once
from orchestrator.techniques.base import TrainingHook
from orchestrator.training.job import DistillJob
from orchestrator.training.progress import Curves, Plateau
from orchestrator.training.sessions import LocalSession, RayTrainSession
from orchestrator.training.teacher_outputs import Passes, TeacherOutputs, mix

Signal = tuple[torch.Tensor, torch.Tensor | None, dict[int, torch.Tensor]]  # teacher logits, their ids (top-k), states by layer


def make_optimizer(name: str, params: Any, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(step: int, *, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak.

        >>> lr_factor(0, warmup=10, steps=100), lr_factor(100, warmup=10, steps=100)
        (0.1, 0.1)
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


class _Distillee(nn.Module):
    """The trainable part: the student plus the hidden-state projection, so DDP syncs both."""

    def __init__(self, student: nn.Module, projection: HiddenProjection | None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.student(x, hidden=self.projection is not None)


@torch.no_grad()
def hidden_shape(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(layers, width) of the hidden states `model` returns for `x`, read from one forward pass."""
    was = model.training
    states = model.eval()(x, hidden=True)[1]
    model.train(was)
    if not states:
        raise ValueError(f"beta > 0 needs hidden states, and a {type(model).__name__} returns none; fix params.beta at 0")
    return len(states), int(states[-1].shape[-1])


@dataclass(frozen=True)
class Check:
    """Score the validation split every `every` steps (0: never) and at the steps `at`, and hand the scores to
    `callback(step, scores)`, which may raise to stop training (multi-objective early stopping, the rungs of
    successive halving)."""

    every: int
    val_tokens: int
    callback: Callable[[int, dict[str, float]], None]
    at: frozenset[int] = frozenset()

    def due(self, step: int) -> bool:
        return bool(self.every and step % self.every == 0) or step in self.at


@dataclass
class _Run:
    """What one run of the loop works with."""

    job: DistillJob
    data: Any
    student: nn.Module  # the model being trained, unwrapped
    distillee: _Distillee
    teacher: nn.Module | None  # run live, or
    cached: TeacherOutputs | None  # its outputs
    hidden_layers: list[int]  # the teacher layers the hidden-state term reads
    hooks: tuple[TrainingHook, ...]
    start: int = 0  # the step a restarted worker group resumes after (0: from scratch)
    saved: dict[str, Any] | None = None  # the training state it resumes from


def _student(job: DistillJob) -> nn.Module:
    """The model to train (seeded; from its init checkpoint when the job has one), its hooks started on it
    with what the checkpoint carries for them."""
    torch.manual_seed(job.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    student, init = job.task.build_model(job.model), {}
    if job.init_path:
        with fetched_once(job.init_path) as path:  # a worker on another node does not keep it
            init = torch.load(path, map_location="cpu", weights_only=True)
        if init["config"] != job.model:
            raise ValueError(f"init checkpoint {job.init_path} holds a {init['config']} model, the job trains {job.model}")
        student.load_state_dict(init.pop("state_dict"))
    for hook in job.hooks:
        hook.start(student, steps=job.steps, init=init)
    return student


def _prepare(job: DistillJob, session: LocalSession | RayTrainSession, data: Any) -> _Run:
    """The student, the teacher's signal and the hidden-state projection, restored from the last checkpoint
    when a restarted worker group resumes."""
    device, task = session.device, job.task
    student = _student(job)
    if job.teacher_path and job.teacher_outputs_path:
        raise ValueError("a DistillJob takes a live teacher or cached teacher outputs, not both")
    teacher = load_frozen(job.teacher_path, task.build_model, device) if job.teacher_path else None
    cached = TeacherOutputs.load(fetch(job.teacher_outputs_path)) if job.teacher_outputs_path else None
    if (teacher is None and cached is None) != (job.weights is None):
        raise ValueError("a DistillJob needs loss weights exactly when it has a teacher")
    projection, pairs = None, []
    if job.weights is not None and job.weights.beta > 0:
        probe = task.batch(data, "train", 1, torch.Generator().manual_seed(job.seed))[0]
        if teacher is not None:
            t_layers, t_width = hidden_shape(teacher, probe.to(device))
        elif cached.hidden is not None:
            t_layers, t_width = cached.teacher_layers, cached.hidden.shape[-1]
        else:
            raise ValueError("beta > 0 needs teacher hidden states, and these cached teacher outputs hold none")
        s_layers, s_width = hidden_shape(student, probe)
        pairs = list(job.layer_map) if job.layer_map else layer_map(s_layers, t_layers)
        projection = HiddenProjection(pairs, s_width, t_width)
    run = _Run(job, data, student, _Distillee(student, projection), teacher, cached, sorted({j for _, j in pairs}), job.hooks)
    run.saved = session.restored()  # a worker group restarted after a failure: on from its last checkpoint
    if run.saved is not None:
        run.distillee.load_state_dict(run.saved["model"])
        run.start = int(run.saved["step"])
    return run


def fit(job: DistillJob, session: LocalSession | RayTrainSession, check: Check | None = None) -> tuple[DistillRecord, nn.Module]:
    """Train `job.model` and score it on validation; returns (its record, the trained model on CPU)."""
    t0 = time.perf_counter()
    torch.set_num_threads(job.threads)
    data = job.task.load_data(fetch(job.data_path))
    run = _prepare(job, session, data)
    model = session.prepare(run.distillee)
    optimizer = make_optimizer(job.optimizer, model.parameters(), job.lr, job.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup=job.warmup, steps=job.steps))
    # each rank its own data stream, a function of seed, rank and step: a resumed run draws what an uninterrupted one does
    stream = mix(job.seed, session.rank)
    model.train()
    plateau = Plateau(job.patience, job.check_every, job.steps, job.val_tokens,
                      after=max([0, *(hook.settles_at(job.steps) for hook in run.hooks)]))
    curves = Curves(job.steps)
    if run.saved is not None:
        optimizer.load_state_dict(run.saved["optimizer"])
        schedule.load_state_dict(run.saved["schedule"])
        curves.points = run.saved["curves"]
        for hook in run.hooks:
            hook.resume(run.student, run.start)
    with working(session.agree) as gate:  # pauses between steps while the node's measurement service times a model
        step, val = _train(run, session, model, optimizer, schedule, stream, plateau, curves, check, gate)
    for hook in reversed(run.hooks):
        hook.finish(run.student)
    record = DistillRecord(steps=step, train_seconds=time.perf_counter() - t0, val_accuracy=val["accuracy"],
                           val_loss=val.get("loss", math.nan), curves=curves.points, resumed_from=run.start,
                           paused_seconds=gate.paused_s)
    return record, run.student.cpu()


def _train(run: _Run, session: LocalSession | RayTrainSession, model: nn.Module, optimizer: torch.optim.Optimizer,
           schedule: Any, stream: int, plateau: Plateau, curves: Curves, check: Check | None,
           gate: Worker) -> tuple[int, dict[str, float]]:
    """The steps, then the final validation score: (the last step, its scores)."""
    job, step = run.job, run.start
    for step, (x, y, signal) in enumerate(_batches(run, stream, session.device, gate), start=run.start + 1):
        curves.loss(step, _step(run, model, optimizer, x, y, signal, step))
        schedule.step()
        for hook in run.hooks:
            hook.after_step(run.student, step)
        scored, converged = _validate(run, check, plateau, step)
        if converged:  # every DDP rank scores the same weights: all stop here
            break
        if scored is not None:
            curves.val(step, scored["accuracy"])
            model.train()  # scoring put it in eval mode
        if job.checkpoint_every and step % job.checkpoint_every == 0 and step < job.steps:
            session.save(step, lambda: {"step": step, "model": run.distillee.state_dict(), "optimizer": optimizer.state_dict(),
                                        "schedule": schedule.state_dict(), "curves": curves.points})
    val = job.task.evaluate(run.student, run.data, "val", max_examples=job.val_tokens)  # as it will run (fake-quantized)
    curves.val(step, val["accuracy"])
    return step, val


def _step(run: _Run, model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          signal: Signal | None, step: int) -> float:
    """One optimizer step on a batch; returns its loss."""
    job = run.job
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=job.precision == "bf16"):
        logits, states = model(x)  # (B, T, V), per-layer (B, T, C)
        loss = job.task.hard_loss(logits, y) if signal is None else _distillation_loss(run, logits, states, y, signal, step)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(f"training diverged: loss {value} at lr {job.lr} (lower `lr`)")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


def _distillation_loss(run: _Run, logits: torch.Tensor, states: list[torch.Tensor], y: torch.Tensor, signal: Signal,
                       step: int) -> torch.Tensor:
    """L = L_soft + λ·L_hard + β·L_hidden against what the teacher said, at this step's temperature."""
    job = run.job
    t_logits, t_indices, t_states = signal
    projection = run.distillee.projection
    hidden = projection(states, t_states) if projection is not None else None
    weights = job.weights
    if job.temperature_end is not None:  # annealed linearly over the steps
        progress = (step - 1) / max(1, job.steps - 1)
        weights = dataclasses.replace(weights, temperature=weights.temperature + (job.temperature_end - weights.temperature) * progress)
    return distillation_loss(logits, t_logits, y, weights, hidden=hidden, teacher_indices=t_indices, hard=job.task.hard_loss)


def _validate(run: _Run, check: Check | None, plateau: Plateau, step: int) -> tuple[dict[str, float] | None, bool]:
    """(this step's validation scores, computed once for both checks, or None; whether the student converged).
    A `check` may raise to stop training."""
    job, scored = run.job, None
    if check is not None and check.due(step) and step < job.steps:
        scored = job.task.evaluate(run.student, run.data, "val", max_examples=check.val_tokens)
        check.callback(step, scored)
    if plateau.due(step):
        scored = scored or job.task.evaluate(run.student, run.data, "val", max_examples=plateau.tokens)
        return scored, plateau.converged(scored["accuracy"])
    return scored, False


def _batches(run: _Run, stream: int, device: torch.device, gate: Worker) -> Iterator[tuple[torch.Tensor, torch.Tensor, Signal | None]]:
    """The batches of steps `run.start + 1` to `job.steps` on `device`: inputs, targets, and what the teacher says
    about them (None with no teacher): read from its cached outputs (the pool's passes of `stream`), or drawn
    with a generator seeded by `stream` and the step, then a live forward pass. Before each, the step boundary:
    `gate` pauses here while the node's measurement service times a model."""
    job, layers = run.job, run.hidden_layers
    passes = Passes(len(run.cached.inputs), stream, start=run.start * job.batch_size) if run.cached is not None else None
    for step in range(run.start + 1, job.steps + 1):
        gate.between_steps()
        if passes is not None:
            x, y, logits, indices, states = run.cached.batch(passes.take(job.batch_size), hidden_layers=layers)
            signal = (logits.to(device), None if indices is None else indices.to(device),
                      {j: h.to(device) for j, h in zip(layers, states)})
            yield x.to(device), y.to(device), signal
            continue
        x, y = job.task.batch(run.data, "train", job.batch_size, torch.Generator().manual_seed(mix(stream, step)))
        x, y = x.to(device), y.to(device)
        if run.teacher is None:
            yield x, y, None
            continue
        with torch.no_grad():
            logits, states = run.teacher(x, hidden=bool(layers))  # outputs, per-layer states
        yield x, y, (logits, None, dict(enumerate(states)))
