"""Distillation (and teacher training): DDP over N Ray Train V2 workers, or in the trial's own process.

`fit` is the training loop, written once for every task: the job's `Task` draws the batches, scores
validation and builds the model from its description. With several workers (or `launcher: ray_train`)
it runs on every worker of a `TorchTrainer` (`train_loop` is what a worker runs) and the student comes
back through a Ray Train checkpoint; with one worker it runs inside the Tune trial's process, which
already holds the resources, and no worker group is started. `run_distill` picks the path. Big things (data, teacher weights, cached
teacher outputs) travel as locations in the sweep's storage (`storage.fetch` gives each node its own copy).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from orchestrator.cache import tensors_digest
from orchestrator.config.techniques import MagnitudePruning
from orchestrator.losses import HiddenProjection, LossWeights, distillation_loss, layer_map
from orchestrator.stages.codebook import share_weights, unshare_weights
from orchestrator.stages.progress import Curves, Plateau
from orchestrator.stages.sessions import LocalSession, RayTrainSession
from orchestrator.stages.prune import GradualPruner, apply_masks_
from orchestrator.stages.quantize import QuantSpec, add_fake_quant, remove_fake_quant
from orchestrator.stages.teacher_outputs import TeacherOutputs
from orchestrator.storage import fetch, fetched_once
from orchestrator.tasks.base import Task


@dataclass(frozen=True)
class GradualSpec:
    """Gradual magnitude pruning during distillation: the method's schedule and the final sparsity."""

    method: MagnitudePruning
    sparsity: float


@dataclass(frozen=True)
class DistillJob:
    """Everything a worker needs, small and picklable (technique configs travel as themselves)."""

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
    init_path: str | None = None  # start from this checkpoint (config, state_dict[, masks held at zero][, codebook: train its centroids])
    gradual: GradualSpec | None = None  # gradual magnitude pruning
    qat: QuantSpec | None = None  # fake quantization (`qat_start` of the steps trained in float first)
    precision: str = "fp32"  # bf16: forward and loss under autocast in bfloat16
    patience: int | None = None  # stop after this many validation checks without a better accuracy (converged)
    check_every: int = 100  # steps between those checks
    checkpoint_every: int = 0  # Ray Train: a checkpoint every this many steps, which a restarted worker group resumes (0: none)


@dataclass(frozen=True)
class DistillResult:
    state_dict: dict[str, torch.Tensor]  # the trained model's weights, on CPU
    train_seconds: float  # time inside the training loop on rank 0 (excludes worker start-up)
    fit_seconds: float  # wall time of the whole stage, worker start-up included
    val_accuracy: float
    val_loss: float  # validation cross-entropy, nats per symbol
    worker_nodes: tuple[str, ...] = ()  # Ray Train: the node of each rank, in rank order (in-process: none)
    worker_weights: tuple[str, ...] = ()  # and a digest of each rank's final weights (all equal: checked)
    steps: int = 0  # optimizer steps taken (fewer than asked when it converged: `patience`)
    curves: dict[str, list[list[float]]] = dataclasses.field(default_factory=dict)  # see `stages.progress.Curves`
    resumed_from: int = 0  # Ray Train: the step of the checkpoint a restarted worker group resumed from (0: none)


WORKER_RESTARTS = 1  # times a Ray Train worker group restarts (from its last checkpoint) before the trial fails


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
    """Linear warm-up, then cosine decay to 10% of the peak."""
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


def load_teacher(task: Task, path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """A frozen model from a checkpoint ({"config": description, "state_dict": ...}) at a path or storage location."""
    blob = torch.load(fetch(path), map_location=device, weights_only=True)
    model = task.build_model(blob["config"]).to(device)
    model.load_state_dict(blob["state_dict"])
    return model.eval().requires_grad_(False)


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
    """Score the validation split every `every` steps and hand the scores to `callback(step, scores)`,
    which may raise to stop training (multi-objective early stopping)."""

    every: int
    val_tokens: int
    callback: Callable[[int, dict[str, float]], None]


def fit(
    job: DistillJob, session: LocalSession | RayTrainSession, check: Check | None = None
) -> tuple[dict[str, float], nn.Module]:
    """Train `job.model` and score it on validation; returns (metrics, the trained model on CPU)."""
    t0 = time.perf_counter()
    torch.set_num_threads(job.threads)
    device, rank = session.device, session.rank
    task = job.task
    data = task.load_data(fetch(job.data_path))

    torch.manual_seed(job.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    student = task.build_model(job.model)
    held: dict[str, torch.Tensor] = {}  # keep-masks held through training (recovery after one-shot pruning)
    shared: dict[str, Any] = {}
    if job.init_path:
        with fetched_once(job.init_path) as path:  # a worker on another node does not keep it
            blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob["config"] != job.model:
            raise ValueError(f"init checkpoint {job.init_path} holds a {blob['config']} model, the job trains {job.model}")
        student.load_state_dict(blob["state_dict"])
        held = blob.get("masks", {})
        shared = blob.get("codebook", {})  # trained weight sharing: only the centroids train
        if shared:
            share_weights(student, shared, held)
    qat_from, fake_quant = None, []  # the step after which fake quantization is on
    if job.qat is not None:
        qat_from = min(job.steps - 1, round(job.qat.method.qat_start * job.steps))
        fake_quant = add_fake_quant(student, job.qat, active=qat_from == 0)
    pruner = None
    if job.gradual is not None:
        pruner = GradualPruner(student, job.gradual.method, job.gradual.sparsity, job.steps)
    if job.teacher_path and job.teacher_outputs_path:
        raise ValueError("a DistillJob takes a live teacher or cached teacher outputs, not both")
    teacher = load_teacher(task, job.teacher_path, device) if job.teacher_path else None
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
    distillee = _Distillee(student, projection)
    saved = session.restored()  # a worker group restarted after a failure: on from its last checkpoint
    start = 0
    if saved is not None:
        distillee.load_state_dict(saved["model"])
        start = int(saved["step"])
    model = session.prepare(distillee)
    optimizer = make_optimizer(job.optimizer, model.parameters(), job.lr, job.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=job.warmup, steps=job.steps)
    )
    # each rank its own data stream; after a resume a fresh one (the steps before are not replayed)
    gen = torch.Generator().manual_seed(job.seed * 1_000_003 + rank + start * 7_919)

    model.train()
    plateau = Plateau(job.patience, job.check_every, job.steps, job.val_tokens,
                      after=max(qat_from or 0, job.steps if pruner is not None else 0))
    curves = Curves(job.steps)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        curves.points = saved["curves"]
        for fq in fake_quant:
            fq.active = qat_from is not None and start >= qat_from
    batches = _batches(job, data, gen, device, teacher, cached, sorted({j for _, j in pairs}), steps=job.steps - start)
    step = start
    for step, (x, y, signal) in enumerate(batches, start=start + 1):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=job.precision == "bf16"):
            logits, states = model(x)  # (B, T, V), per-layer (B, T, C)
            if signal is None:
                loss = task.hard_loss(logits, y)
            else:
                t_logits, t_indices, t_states = signal
                hidden = projection(states, t_states) if projection is not None else None
                weights = job.weights
                if job.temperature_end is not None:
                    progress = (step - 1) / max(1, job.steps - 1)
                    T = weights.temperature + (job.temperature_end - weights.temperature) * progress
                    weights = dataclasses.replace(weights, temperature=T)
                loss = distillation_loss(logits, t_logits, y, weights, hidden=hidden, teacher_indices=t_indices,
                                         hard=task.hard_loss)
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"training diverged: loss {value} at lr {job.lr} (lower `lr`)")
        curves.loss(step, value)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if pruner is not None:
            pruner.after_step(step)
        elif held:
            apply_masks_(student, held)
        if step == qat_from:
            for fq in fake_quant:
                fq.active = True
        scored = None  # this step's validation scores, computed once for both checks
        if check is not None and step % check.every == 0 and step < job.steps:
            scored = task.evaluate(student, data, "val", max_examples=check.val_tokens)
            check.callback(step, scored)
        if plateau.due(step):
            scored = scored or task.evaluate(student, data, "val", max_examples=plateau.tokens)
            if plateau.converged(scored["accuracy"]):  # every DDP rank scores the same weights: all stop here
                break
        if scored is not None:
            curves.val(step, scored["accuracy"])
            model.train()  # scoring put it in eval mode
        if job.checkpoint_every and step % job.checkpoint_every == 0 and step < job.steps:
            session.save(step, lambda: {"step": step, "model": distillee.state_dict(), "optimizer": optimizer.state_dict(),
                                        "schedule": schedule.state_dict(), "curves": curves.points})

    val = task.evaluate(student, data, "val", max_examples=job.val_tokens)  # as it will run (fake-quantized)
    curves.val(step, val["accuracy"])
    if qat_from is not None:
        remove_fake_quant(student)  # the latent weights; the quantize stage applies the same quantizer to them
    if shared:
        unshare_weights(student)  # each weight its trained centroid
    metrics = {
        "steps": step,
        "train_seconds": time.perf_counter() - t0,
        "val_accuracy": val["accuracy"],
        "val_loss": val.get("loss", math.nan),
        "curves": json.dumps(curves.points),  # a string: Ray Train reports flat metrics
        "resumed_from": start,
    }
    return metrics, student.cpu()


Signal = tuple[torch.Tensor, torch.Tensor | None, dict[int, torch.Tensor]]  # teacher logits, their ids (top-k), states by layer


def _batches(
    job: DistillJob, data: Any, gen: torch.Generator, device: torch.device, teacher: nn.Module | None,
    cached: TeacherOutputs | None, hidden_layers: list[int], steps: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, Signal | None]]:
    """`steps` batches on `device`: inputs, targets, and what the teacher says about them (None with no
    teacher): read from its cached outputs, or from a live forward pass."""
    for _ in range(steps):
        if cached is not None:
            x, y, logits, indices, states = cached.batch(job.batch_size, gen, hidden_layers=hidden_layers)
            signal = (logits.to(device), None if indices is None else indices.to(device),
                      {j: h.to(device) for j, h in zip(hidden_layers, states)})
            yield x.to(device), y.to(device), signal
            continue
        x, y = job.task.batch(data, "train", job.batch_size, gen)
        x, y = x.to(device), y.to(device)
        if teacher is None:
            yield x, y, None
            continue
        with torch.no_grad():
            logits, states = teacher(x, hidden=bool(hidden_layers))  # outputs, per-layer states
        yield x, y, (logits, None, dict(enumerate(states)))


def train_loop(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs: `fit`, then rank 0 reports the model as a checkpoint."""
    import ray.train

    job: DistillJob = config["job"]
    session = RayTrainSession()
    metrics, student = fit(job, session)
    # every rank's node and a digest of its final weights: DDP must have left them identical
    ranks: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(ranks, (ray.get_runtime_context().get_node_id(), tensors_digest(student.state_dict())))
    metrics = {**metrics, "worker_nodes": ",".join(n for n, _ in ranks), "worker_weights": ",".join(d for _, d in ranks)}
    if session.rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            state = {k: v.detach() for k, v in student.state_dict().items()}
            torch.save({"config": job.model, "state_dict": state}, Path(tmp) / "model.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
    else:
        ray.train.report(metrics, checkpoint=None)


def run_distill(
    job: DistillJob,
    *,
    name: str,
    storage_path: str,
    num_workers: int,
    use_gpu: bool,
    cpus_per_worker: float,
    placement_strategy: str = "PACK",
    in_process: bool = False,
    check: Check | None = None,
) -> DistillResult:
    """Train with `num_workers` DDP workers and return the rank-0 model (blocking).

    Args:
        name: the Ray Train run name; derived from the trial id so that a restarted trial resumes.
        storage_path: where Ray Train keeps the run and its checkpoint: a directory every node sees, or a URI.
        in_process: run `fit` right here instead (one worker only): the caller's process must hold the
            resources, as a Tune trial does. Saves starting a worker group (seconds per trial).
        check: validation checks during training (in-process only).
    """
    t = time.perf_counter()
    if in_process:
        if num_workers != 1:
            raise ValueError(f"in-process distillation runs one worker, not num_workers={num_workers}")
        device = torch.device("cuda" if use_gpu else "cpu")
        metrics, student = fit(job, LocalSession(device), check)
        state = {k: v.detach() for k, v in student.state_dict().items()}
    elif check is not None:
        raise ValueError("validation checks during training need in_process=True")
    else:
        metrics, state = _fit_with_ray_train(job, name, storage_path, num_workers, use_gpu, cpus_per_worker,
                                             placement_strategy)
    return DistillResult(
        state_dict=state,
        train_seconds=float(metrics["train_seconds"]),
        fit_seconds=time.perf_counter() - t,
        val_accuracy=float(metrics["val_accuracy"]),
        val_loss=float(metrics["val_loss"]),
        worker_nodes=tuple(metrics["worker_nodes"].split(",")) if "worker_nodes" in metrics else (),
        worker_weights=tuple(metrics["worker_weights"].split(",")) if "worker_weights" in metrics else (),
        steps=int(metrics["steps"]),
        curves=json.loads(metrics.get("curves", "{}")),
        resumed_from=int(metrics.get("resumed_from", 0)),
    )


def _fit_with_ray_train(
    job: DistillJob, name: str, storage_path: str, num_workers: int, use_gpu: bool, cpus_per_worker: float,
    placement_strategy: str,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": job},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=placement_strategy,
        ),
        # a worker lost (killed, out of memory, its node gone): the group restarts, from the last checkpoint
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path,
                                       failure_config=ray.train.FailureConfig(max_failures=WORKER_RESTARTS),
                                       checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"distillation run {name} reported no checkpoint")
    digests = result.metrics["worker_weights"].split(",")
    if len(set(digests)) != 1:
        raise RuntimeError(f"distillation run {name}: its DDP ranks ended with different weights ({digests}); "
                           "gradients were not synchronised")
    with result.checkpoint.as_directory() as d:
        blob = torch.load(Path(d) / "model.pt", weights_only=True)
    return result.metrics, blob["state_dict"]
