"""Which weights the techniques act on, and pruning masks applied and held through training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from orchestrator.core.compressible import output_layer
from orchestrator.techniques.base import TrainingHook


def prunable_weights(model: nn.Module, *, lm_head: bool = True) -> dict[str, nn.Parameter]:
    """The weight matrices pruning acts on: every `nn.Linear` weight (embeddings are left dense), the
    output layer only with `lm_head`. Under quantization-aware training these are the latent float weights
    the optimizer updates."""
    out = {}
    head = output_layer(model)
    seen: set[int] = set() if lm_head or head is None else {id(head.weight)}  # a tied head is pruned once, or not at all
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            fake_quantized = parametrize.is_parametrized(m, "weight")  # then `m.weight` is computed anew each time
            weight = m.parametrizations.weight.original if fake_quantized else m.weight
            if id(weight) not in seen:
                seen.add(id(weight))
                out[f"{name}.weight"] = weight
    return out


def quantizable_weights(model: nn.Module, *, embeddings: bool = True) -> dict[str, nn.Parameter]:
    """The matrices quantization acts on: `nn.Linear` and (optionally) `nn.Embedding` weights, each tensor
    once (fake-quantized ones are left to QAT); biases and norms stay float32."""
    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()  # a tied LM head and token embedding are one tensor: quantized once
    if not embeddings:  # ... or, when embeddings stay float, not at all
        seen = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, m in model.named_modules():
        if isinstance(m, kinds) and not parametrize.is_parametrized(m, "weight") and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out[f"{name}.weight"] = m.weight
    return out


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


def apply_masks_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Zero every weight a keep-mask drops, in place."""
    weights = prunable_weights(model)
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask.to(weights[name].device))


@dataclass
class HoldMasks(TrainingHook):
    """Recovery after one-shot pruning: the pruned weights are held at zero after every step (the masks come
    with the checkpoint training starts from)."""

    masks: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def start(self, model: nn.Module, *, steps: int, init: Mapping[str, Any]) -> None:
        self.masks = init.get("masks", {})

    def after_step(self, model: nn.Module, step: int) -> None:
        apply_masks_(model, self.masks)
