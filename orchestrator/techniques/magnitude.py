"""Magnitude pruning (`method: magnitude`): the mask M in W ⊙ M zeroes the `sparsity` fraction of Linear
weights with least |w|, over all layers together (global) or in each layer alone; one-shot after
distillation, or gradually during it with the cubic schedule of Zhu & Gupta (2017) (`GradualPruning`)."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from orchestrator.core.errors import ConfigError
from orchestrator.techniques.base import PruneMethod, PruneResult, TrainingHook, percent, check, register_technique
from orchestrator.techniques.weights import apply_masks_, prunable_weights


def global_magnitude_masks(weights: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
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


def cubic_sparsity(step: int, *, final: float, begin: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): s_t = s_f + (s_i − s_f)(1 − (t − t0)/(n·Δt))³ between `begin` and `end` steps;
    `initial` before, `final` from `end` on.

        >>> cubic_sparsity(0, final=0.5, begin=0, end=10), cubic_sparsity(10, final=0.5, begin=0, end=10)
        (0.0, 0.5)
    """
    if step < begin:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1 - (step - begin) / (end - begin)) ** 3


@register_technique("magnitude")
@dataclass(frozen=True)
class MagnitudePruning(PruneMethod):
    """Unstructured: zero the `sparsity` fraction of Linear weights with least |w|."""

    scope: Literal["global", "layer"] = "global"  # rank all Linear weights together, or each layer alone
    schedule: Literal["oneshot", "gradual"] = "oneshot"  # gradual: during distillation, Zhu & Gupta's cubic schedule
    start: float = check(lambda v: 0 <= v < 1, "a number in [0, 1)", 0.1)  # gradual: fraction of distillation steps before the first mask
    end: float = check(lambda v: 0 < v <= 1, "a number in (0, 1]", 0.7)  # gradual: fraction of steps at which `sparsity` is reached
    every: int = check(lambda v: v >= 1, "an integer >= 1", 10)  # gradual: steps between mask updates

    @torch.no_grad()
    def prune(self, model: nn.Module, sparsity: float) -> PruneResult:
        masks = magnitude_masks(model, self.scope, sparsity, lm_head=self.lm_head)
        apply_masks_(model, masks)
        return PruneResult(model, masks)

    @property
    def during_distillation(self) -> bool:
        return self.schedule == "gradual"

    @property
    def trains_as(self) -> str:
        return "prune schedule gradual"

    def distill_hook(self, params: Mapping[str, Any]) -> TrainingHook | None:
        return GradualPruning(self, float(params["sparsity"])) if self.schedule == "gradual" else None

    def check(self, *, source: str, given: Set[str], distill: bool) -> None:
        super().check(source=source, given=given, distill=distill)
        if self.end <= self.start:
            raise ConfigError(f"{source}: `prune.end` ({self.end}) must be greater than `prune.start` ({self.start})")
        if self.schedule == "gradual" and self.recovery_steps:
            raise ConfigError(f"{source}: `prune.recovery_steps` follows one-shot pruning; gradual pruning recovers as it "
                              "trains: set it to 0")

    def describe_pruning(self, params: Mapping[str, Any]) -> str:
        return f"Prune {percent(params.get('sparsity'))} of the weights by magnitude ({self.scope}, {self.schedule})"


@dataclass
class GradualPruning(TrainingHook):
    """Gradual magnitude pruning during distillation: masks recomputed every `method.every` steps between
    `start` and `end` (fractions of the steps), at the cubic schedule's sparsity, and applied after every
    optimizer step, so pruned weights stay zero; the final `sparsity` is reached at step `end`."""

    method: MagnitudePruning
    sparsity: float
    begin: int = field(default=0, init=False, repr=False, compare=False)
    end: int = field(default=0, init=False, repr=False, compare=False)
    masks: dict[str, torch.Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    def start(self, model: nn.Module, *, steps: int, init: Mapping[str, Any]) -> None:
        self.begin = min(steps, round(self.method.start * steps))
        self.end = max(self.begin + 1, min(steps, round(self.method.end * steps)))

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.begin <= step <= self.end and ((step - self.begin) % self.method.every == 0 or step == self.end):
            target = cubic_sparsity(step, final=self.sparsity, begin=self.begin, end=self.end)
            self.masks = magnitude_masks(model, self.method.scope, target, lm_head=self.method.lm_head)
        apply_masks_(model, self.masks)

    def settles_at(self, steps: int) -> int:
        return steps  # the student changes under the schedule to its end: never stopped as converged
