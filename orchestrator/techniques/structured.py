"""Structured pruning (`method: structured`): the MLP neurons and/or attention heads of least norm are cut
out of every block, the same number in each, giving a smaller dense model. It works on any model that
offers its units (`core.compressible`: `structured_units` / `resized`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from orchestrator.core.compressible import UnitKind, supports_structured_pruning
from orchestrator.techniques.base import PruneMethod, PruneResult, percent, register_technique


@torch.no_grad()
def prune_units(model: nn.Module, kind: UnitKind, keep_fraction: float, order: int) -> nn.Module:
    """A smaller dense model: every block keeps the round(keep_fraction · units) units (at least one) of
    highest `order`-norm over all their weights, the same number in every block.

    Args:
        model: implements `structured_units` and `resized`.
        kind: "mlp" (neurons) or "heads" (attention heads; key/value groups under grouped-query attention).
    """
    if not supports_structured_pruning(model):
        raise TypeError(f"structured pruning needs a model with structured_units() and resized(); "
                        f"{type(model).__name__} has none (use magnitude or nm pruning)")
    groups = model.structured_units(kind)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    keep_n = max(1, round(keep_fraction * groups[0].units))
    for group in groups:
        parts = [state[s.param].movedim(s.dim, 0)[s.index].reshape(group.units, -1) for s in group.slices]  # (U, ...)
        score = torch.linalg.vector_norm(torch.cat(parts, 1), ord=order, dim=1)  # (U,)
        keep = score.topk(keep_n).indices.sort().values
        for s in group.slices:
            kept = s.index[keep]  # (K, per_unit) or (K, sections, size)
            kept = kept.transpose(0, 1) if kept.dim() == 3 else kept
            state[s.param] = state[s.param].index_select(s.dim, kept.reshape(-1))
    small = model.resized(kind, keep_n)
    small.load_state_dict(state)
    return small


@register_technique("structured")
@dataclass(frozen=True)
class StructuredPruning(PruneMethod):
    """Remove the `sparsity` fraction of MLP neurons and/or attention heads of every block, least important
    first: the model becomes a smaller dense one."""

    target: Literal["mlp", "heads", "both"] = "mlp"
    norm: Literal["l1", "l2"] = "l2"  # importance: this norm of a neuron's (head's) in and out weights

    def prune(self, model: nn.Module, sparsity: float) -> PruneResult:
        order = 1 if self.norm == "l1" else 2
        small = model
        for kind in ("mlp", "heads"):
            if self.target in (kind, "both"):
                small = prune_units(small, kind, 1 - sparsity, order)
        return PruneResult(small.train(model.training), {})

    def describe_pruning(self, params: Mapping[str, Any]) -> str:
        return f"Prune {percent(params.get('sparsity'))} of the {self.target} units by {self.norm} norm"
