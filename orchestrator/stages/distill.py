"""Distillation (and teacher training) as a Ray Train V2 `TorchTrainer`: DDP over N workers.

`train_loop` runs on every worker and is all a worker runs. `run_distill` is called by a driver (a Tune
trial, or the sweep when it builds the teacher); it passes a small plain config and gets the student back
through a Ray Train checkpoint. Big things (data, teacher weights) travel by path in the sweep's storage.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.losses import HiddenProjection, LossWeights, distillation_loss, hard_loss, layer_map
from orchestrator.measure import score_lm
from orchestrator.tasks.char_lm import CharData, build_model, sample_batch
from orchestrator.tasks.gpt import GPT, GPTConfig


@dataclass(frozen=True)
class DistillJob:
    """Everything a worker needs, small and picklable."""

    data_path: str  # CharData in storage
    teacher_path: str | None  # teacher checkpoint; None trains from labels alone (how the teacher is built)
    model: dict[str, int]  # GPTConfig of the model being trained
    steps: int
    batch_size: int  # per worker
    warmup: int
    lr: float
    optimizer: str
    seed: int  # model init and data order
    weights: LossWeights | None  # None with no teacher
    val_tokens: int  # validation positions scored at the end (never test)
    threads: int  # torch threads per worker


@dataclass(frozen=True)
class DistillResult:
    state_dict: dict[str, torch.Tensor]  # the trained model's weights, on CPU
    train_seconds: float  # time inside the training loop on rank 0 (excludes worker start-up)
    fit_seconds: float  # wall time of TorchTrainer.fit(), start-up included
    val_accuracy: float
    val_loss: float  # validation cross-entropy, nats per symbol


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}")


def lr_factor(step: int, *, warmup: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress)))


class _Distillee(nn.Module):
    """The trainable part: the student plus the hidden-state projection, so DDP syncs both."""

    def __init__(self, student: GPT, projection: HiddenProjection | None) -> None:
        super().__init__()
        self.student = student
        self.projection = projection

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.student(x, hidden=self.projection is not None)


def load_teacher(path: str | Path, device: torch.device | str = "cpu") -> GPT:
    blob = torch.load(path, map_location=device, weights_only=True)
    model = GPT(GPTConfig(**blob["config"])).to(device)
    model.load_state_dict(blob["state_dict"])
    return model.eval().requires_grad_(False)


def train_loop(config: dict[str, Any]) -> None:
    """The per-worker loop: the only code that runs on Ray Train workers."""
    import ray.train
    import ray.train.torch

    t0 = time.perf_counter()
    job = DistillJob(**{**config, "weights": LossWeights(**config["weights"]) if config["weights"] else None})
    torch.set_num_threads(job.threads)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    data = CharData.load(job.data_path)
    cfg = GPTConfig(**job.model)

    torch.manual_seed(job.seed)  # same init on every rank (DDP also broadcasts rank 0's)
    student = build_model(cfg.vocab_size, cfg.context, layers=cfg.layers, width=cfg.width, heads=cfg.heads)
    teacher = load_teacher(job.teacher_path, device) if job.teacher_path else None
    if (teacher is None) != (job.weights is None):
        raise ValueError("a DistillJob needs loss weights exactly when it has a teacher")
    projection = None
    if job.weights is not None and job.weights.beta > 0:
        pairs = layer_map(cfg.layers, teacher.cfg.layers)
        projection = HiddenProjection(pairs, cfg.width, teacher.cfg.width)
    model = ray.train.torch.prepare_model(_Distillee(student, projection))
    optimizer = make_optimizer(job.optimizer, model.parameters(), job.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup=job.warmup, steps=job.steps)
    )
    gen = torch.Generator().manual_seed(job.seed * 1_000_003 + rank)  # each rank its own data stream

    model.train()
    for _ in range(job.steps):
        x, y = sample_batch(data.train, job.batch_size, cfg.context, gen)
        x, y = x.to(device), y.to(device)
        logits, states = model(x)  # (B, T, V), per-layer (B, T, C)
        if teacher is None:
            loss = hard_loss(logits, y)
        else:
            with torch.no_grad():
                t_logits, t_states = teacher(x, hidden=projection is not None)  # (B, T, V)
            hidden = projection(states, t_states) if projection is not None else None
            loss = distillation_loss(logits, t_logits, y, job.weights, hidden=hidden)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training diverged: loss {loss.item()} at lr {job.lr} (lower `lr`)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()

    val = score_lm(student, data.val, context=cfg.context, max_positions=job.val_tokens)
    metrics = {
        "train_seconds": time.perf_counter() - t0,
        "val_accuracy": val.accuracy,
        "val_loss": math.log(val.perplexity),
    }
    if rank == 0:
        with tempfile.TemporaryDirectory() as tmp:
            state = {k: v.detach().cpu() for k, v in student.state_dict().items()}
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
) -> DistillResult:
    """Train with `num_workers` DDP workers and return the rank-0 model (blocking).

    Args:
        name: the Ray Train run name; derived from the trial id so that a restarted trial resumes.
        storage_path: where Ray Train keeps the run and its checkpoint (shared on a cluster).
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    config = dataclasses.asdict(job)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})},
            placement_strategy=placement_strategy,
        ),
        run_config=ray.train.RunConfig(name=name, storage_path=storage_path),
    )
    t = time.perf_counter()
    result = trainer.fit()
    fit_seconds = time.perf_counter() - t
    if result.checkpoint is None:
        raise RuntimeError(f"distillation run {name} reported no checkpoint")
    with result.checkpoint.as_directory() as d:
        blob = torch.load(Path(d) / "model.pt", weights_only=True)
    return DistillResult(
        state_dict=blob["state_dict"],
        train_seconds=float(result.metrics["train_seconds"]),
        fit_seconds=fit_seconds,
        val_accuracy=float(result.metrics["val_accuracy"]),
        val_loss=float(result.metrics["val_loss"]),
    )
