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
    """`fit` in the calling process: world size 1, no process group, no checkpoints (a Tune trial that fails
    runs again whole)."""

    rank = 0
    agree = None  # one process decides alone whether to pause for a measurement (`io.gate`)

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def prepare(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def restored(self) -> dict[str, Any] | None:
        return None

    def save(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        pass


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
            path = Path(d) / "training.pt"
            return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None

    def save(self, step: int, state: Callable[[], dict[str, Any]]) -> None:
        """Every rank reports (Ray Train's reports are collective); rank 0's carries the training state."""
        import ray.train

        if self.rank != 0:
            ray.train.report({"step": step}, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(state(), Path(tmp) / "training.pt")
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(tmp))
