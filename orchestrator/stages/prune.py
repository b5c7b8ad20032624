"""Global magnitude pruning, unstructured: the mask M in W ⊙ M zeroes the smallest |w| across all layers."""

from __future__ import annotations

import torch
from torch import nn


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrices pruning acts on: every `nn.Linear` weight (embeddings are left dense)."""
    return {f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, nn.Linear)}


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


@torch.no_grad()
def prune_(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """Zero the pruned weights of `model` in place; returns the keep-masks by parameter name."""
    weights = prunable_weights(model)
    masks = global_magnitude_masks(weights, sparsity)
    for name, mask in masks.items():
        weights[name].mul_(mask)
    return masks
