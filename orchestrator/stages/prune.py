"""Pruning: a method is a config class (`config/techniques.py`) plus one handler registered here.

- magnitude: unstructured, the mask M in W ⊙ M zeroes the smallest |w|, over all Linear layers together
  (global) or in each layer alone; one-shot after distillation, or gradually during it with the cubic
  schedule of Zhu & Gupta (2017), `GradualPruner`;
- nm (2:4 by default): the n largest |w| of every m consecutive inputs of a Linear row are kept;
- structured: MLP neurons and attention heads of least norm are cut out, giving a smaller dense model.

`prune` returns the (possibly new) model and the keep-masks of the mask-based methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from orchestrator.config.techniques import MagnitudePruning, PruneMethod, SemiStructuredPruning, StructuredPruning
from orchestrator.models import output_layer, prune_units


@dataclass
class PruneResult:
    model: nn.Module  # the model passed in (mask methods) or a new, smaller one (structured)
    masks: dict[str, torch.Tensor]  # parameter name -> bool keep-mask; empty for structured pruning


Handler = Callable[[nn.Module, PruneMethod, float], PruneResult]
PRUNERS: dict[type[PruneMethod], Handler] = {}


def register_pruner(config_cls: type[PruneMethod]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        PRUNERS[config_cls] = fn
        return fn

    return register


@torch.no_grad()
def prune(model: nn.Module, method: PruneMethod, sparsity: float) -> PruneResult:
    """Apply `method` at `sparsity` (ignored by N:M, whose pattern fixes it) to `model`."""
    return PRUNERS[type(method)](model, method, sparsity)


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


def measured_sparsity(model: nn.Module) -> float:
    """Fraction of the prunable weights that are exactly zero."""
    weights = prunable_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


# ----------------------------------------------------------------------------------------------
# Unstructured magnitude


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Boolean keep-masks that zero round(sparsity · N) weights of least |w| over all tensors together.

    Ties are broken as `torch.nn.utils.prune.global_unstructured` breaks them (one `topk`).

    Args:
        weights: name -> weight tensor.
        sparsity: fraction in [0, 1) of all listed weights to remove.

    Returns:
        name -> bool tensor of the weight's shape (True = kept); empty when nothing is pruned.

    Example:
        >>> m = global_magnitude_masks({"w": torch.tensor([[0.1, -3.0], [2.0, 0.5]])}, 0.5)
        >>> m["w"].tolist()
        [[False, True], [True, False]]
    """
    total = sum(w.numel() for w in weights.values())
    n_prune = round(sparsity * total)
    if n_prune == 0:
        return {}
    magnitudes = torch.cat([w.detach().abs().flatten() for w in weights.values()])  # (N,)
    keep = torch.ones_like(magnitudes, dtype=torch.bool)
    keep[torch.topk(magnitudes, n_prune, largest=False).indices] = False
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start : start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def magnitude_masks(model: nn.Module, scope: str, sparsity: float, *, lm_head: bool = True) -> dict[str, torch.Tensor]:
    weights = prunable_weights(model, lm_head=lm_head)
    if scope == "global":
        return global_magnitude_masks(weights, sparsity)
    masks: dict[str, torch.Tensor] = {}
    for name, w in weights.items():
        masks.update(global_magnitude_masks({name: w}, sparsity))
    return masks


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    weights = prunable_weights(model)
    with torch.no_grad():
        for name, mask in masks.items():
            weights[name].mul_(mask.to(weights[name].device))


@register_pruner(MagnitudePruning)
def _magnitude(model: nn.Module, method: PruneMethod, sparsity: float) -> PruneResult:
    assert isinstance(method, MagnitudePruning)
    masks = magnitude_masks(model, method.scope, sparsity, lm_head=method.lm_head)
    apply_masks_(model, masks)
    return PruneResult(model, masks)


def cubic_sparsity(step: int, *, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(n·Δt))³ between `begin` and `end` steps;
    `initial` before, `final` from `end` on."""
    if step < begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3


class GradualPruner:
    """Gradual magnitude pruning during training: masks recomputed every `method.every` steps between
    `start` and `end` (fractions of `steps`), at the cubic schedule's sparsity, and re-applied after every
    optimizer step, so pruned weights stay zero. `final` sparsity is reached at step `end`."""

    def __init__(self, model: nn.Module, method: MagnitudePruning, sparsity: float, steps: int) -> None:
        self.model, self.method, self.final = model, method, sparsity
        self.begin = min(steps, round(method.start * steps))
        self.end = max(self.begin + 1, min(steps, round(method.end * steps)))
        self.masks: dict[str, torch.Tensor] = {}

    def after_step(self, step: int) -> None:
        """Call after optimizer step `step` (1-based)."""
        if self.begin <= step <= self.end and ((step - self.begin) % self.method.every == 0 or step == self.end):
            target = cubic_sparsity(step, final=self.final, begin=self.begin, end=self.end)
            self.masks = magnitude_masks(self.model, self.method.scope, target, lm_head=self.method.lm_head)
        apply_masks_(self.model, self.masks)


# ----------------------------------------------------------------------------------------------
# Semi-structured N:M


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the `n` largest |w| of every `m` consecutive entries of each row; columns past the
    last whole group of `m` stay dense."""
    rows, cols = w.shape
    whole = cols // m * m
    mask = torch.ones_like(w, dtype=torch.bool)
    if whole:
        groups = w[:, :whole].detach().abs().reshape(rows, -1, m)  # (rows, cols/m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
        mask[:, :whole] = keep.reshape(rows, whole)
    return mask


@register_pruner(SemiStructuredPruning)
def _nm(model: nn.Module, method: PruneMethod, sparsity: float) -> PruneResult:
    assert isinstance(method, SemiStructuredPruning)
    masks = {name: nm_mask(w, method.n, method.m) for name, w in prunable_weights(model, lm_head=method.lm_head).items()}
    apply_masks_(model, masks)
    return PruneResult(model, masks)


# ----------------------------------------------------------------------------------------------
# Structured: neurons and heads


@register_pruner(StructuredPruning)
def _structured(model: nn.Module, method: PruneMethod, sparsity: float) -> PruneResult:
    """MLP neurons and/or attention heads of least norm, through the model's `structured_units`."""
    assert isinstance(method, StructuredPruning)
    order = 1 if method.norm == "l1" else 2
    small = model
    for kind in ("mlp", "heads"):
        if method.target in (kind, "both"):
            small = prune_units(small, kind, 1 - sparsity, order)
    return PruneResult(small.train(model.training), {})
