"""N:M semi-structured pruning (`method: nm`, 2:4 by default): the `n` largest |w| of every `m` consecutive
inputs of a Linear row are kept; the pattern fixes the sparsity (1 − n/m), so `params.sparsity` is not used."""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from orchestrator.core.errors import ConfigError
from orchestrator.techniques.base import PruneMethod, PruneResult, check, register_technique
from orchestrator.techniques.weights import apply_masks_, prunable_weights


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the `n` largest |w| of every `m` consecutive entries of each row; columns past the
    last whole group of `m` stay dense.

        >>> nm_mask(torch.tensor([[1.0, -4.0, 3.0, 2.0, 9.0]]), 2, 4).tolist()
        [[False, True, True, False, True]]
    """
    rows, cols = w.shape
    whole = cols // m * m
    mask = torch.ones_like(w, dtype=torch.bool)
    if whole:
        groups = w[:, :whole].detach().abs().reshape(rows, -1, m)  # (rows, cols/m, m)
        keep = torch.zeros_like(groups, dtype=torch.bool)
        keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
        mask[:, :whole] = keep.reshape(rows, whole)
    return mask


@register_technique("nm")
@dataclass(frozen=True)
class SemiStructuredPruning(PruneMethod):
    """N:M: keep the `n` largest |w| of every `m` consecutive weights along a Linear layer's input."""

    uses: ClassVar[tuple[str, ...]] = ()  # the pattern fixes the sparsity
    n: int = check(lambda v: v >= 1, "an integer >= 1", 2)
    m: int = check(lambda v: v >= 2, "an integer >= 2", 4)

    @torch.no_grad()
    def prune(self, model: nn.Module, sparsity: float) -> PruneResult:
        masks = {name: nm_mask(w, self.n, self.m) for name, w in prunable_weights(model, lm_head=self.lm_head).items()}
        apply_masks_(model, masks)
        return PruneResult(model, masks)

    def why_unused(self, param: str) -> str:
        return f": its {self.n}:{self.m} pattern fixes the sparsity"

    def check(self, *, source: str, given: Set[str], distill: bool) -> None:
        super().check(source=source, given=given, distill=distill)
        if self.n >= self.m:
            raise ConfigError(f"{source}: prune method nm needs n < m, got {self.n}:{self.m}")

    def describe_pruning(self, params: Mapping[str, Any]) -> str:
        return f"Prune {self.n}:{self.m} (keep {self.n} of every {self.m} weights)"
