"""Model checkpoints in storage: ``{"config": description, "state_dict": ..., **extras}`` (extras: the keep-masks
a model trains under, what a technique's training hook starts from). A teacher, a student and the model a
distillation starts from are all kept this way; `build` is the task's (`Task.build_model`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from orchestrator.io.storage import fetch

Build = Callable[[dict[str, Any]], nn.Module]  # a model's description -> an untrained model of that shape


def save_checkpoint(path: str | os.PathLike[str], description: dict[str, Any], state: dict[str, torch.Tensor], **extras: Any) -> None:
    """A checkpoint of a model's description (`Task.describe`) and weights, and the extras that are not empty."""
    torch.save({"config": description, "state_dict": state, **{k: v for k, v in extras.items() if v}}, path)


def load_checkpoint(location: str | Path, build: Build, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """(the model, its extras) of the checkpoint at a path or storage location."""
    blob = torch.load(fetch(location), map_location=device, weights_only=True)
    model = build(blob.pop("config")).to(device)
    model.load_state_dict(blob.pop("state_dict"))
    return model, blob


def load_frozen(location: str | Path, build: Build, device: torch.device | str = "cpu") -> nn.Module:
    """A checkpoint's model in eval mode with no gradients: a teacher."""
    model, _ = load_checkpoint(location, build, device)
    return model.eval().requires_grad_(False)
