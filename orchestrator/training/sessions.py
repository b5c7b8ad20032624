"""Where `training.loop.fit` runs: in the calling process (`LocalSession`), or on a Ray Train worker
(`RayTrainSession`: DDP, and checkpoints a restarted worker group resumes from)."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


class LocalSession:
    """`fit` in the calling process: world size 1, no process group. With `checkpoints` (a directory), the
    training state every `checkpoint_every` steps goes to `training.pt` there (replaced whole), and a `fit` that
    finds one there goes on from it: a trial whose process died resumes its student when it runs again."""

    rank = 0
    agree = None  # one process decides alone whether to pause for a measurement (`io.gate`)

    def __init__(self, device: torch.device, checkpoints: Path | None = None) -> None:
        self.device, self.checkpoints = device, checkpoints

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def restored(self) -> dict[str, Any] | None:
        path = self.checkpoints / CHECKPOINT if self.checkpoints is not None else None
        return torch.load(path, map_location="cpu", weights_only=False) if path is not None and path.is_file() else None

    def save(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        if self.checkpoints is None:
            return
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoints / f".{CHECKPOINT}.tmp"
        torch.save(state(), tmp)
        tmp.replace(self.checkpoints / CHECKPOINT)  # never half a checkpoint


CHECKPOINT = "training.pt"  # a distillation's training state: step, model, optimizer, schedule, curves


class RayTrainSession:
    """`fit` on a Ray Train worker: DDP through `ray.train.torch.prepare_model`; checkpoints every
    `checkpoint_every` steps, which a worker group restarted after a failure resumes from."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self.rank = ray.train.get_context().get_world_rank()
        self.world_size = ray.train.get_context().get_world_size()
        self.device = ray.train.torch.get_device()

    def agree(self, pause: bool) -> bool:
        """Whether any rank was asked to pause for a measurement (`io.gate`): all ranks pause at the same step,
        so none waits inside a collective for one that paused."""
        if self.world_size == 1:
            return pause
        flag = torch.tensor([1.0 if pause else 0.0])
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def prepare(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def restored(self) -> dict[str, Any] | None:
        """The training state of the last checkpoint reported (after a restart), or None."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as d:
            path = Path(d) / CHECKPOINT
            return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None

    def save(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        """Every rank reports (Ray Train's reports are collective); rank 0's carries the training state."""
        import ray.train

        if self.rank != 0:
            ray.train.report({"step": step}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state(), Path(tmp) / CHECKPOINT)
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
