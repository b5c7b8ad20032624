"""The distillation loss L = L_soft + λ·L_hard + β·L_hidden (docs/techniques.md), pure torch."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), averaged over positions.

    Args:
        student_logits: (..., V) logits of the student.
        teacher_logits: (..., V) logits of the teacher, same shape.
        temperature: T > 0; T² keeps gradient magnitudes comparable across temperatures (Hinton et al. 2015).
    """
    V = student_logits.shape[-1]
    log_p_s = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1)  # (N, V)
    log_p_t = F.log_softmax(teacher_logits.reshape(-1, V) / temperature, dim=-1)  # (N, V)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)  # (N,) KL per position
    return temperature**2 * kl.mean()


def soft_loss_topk(
    student_logits: torch.Tensor, teacher_topk: torch.Tensor, indices: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`soft_loss` against a teacher that kept only its k largest logits per position.

    The teacher's distribution is the softmax of its k logits (/T); the student's log-probabilities are
    its full softmax (/T) read at the same k vocabulary ids. T² · Σ_k p_t (log p_t − log p_s), averaged
    over positions; ≥ 0, and equal to `soft_loss` when k is the whole vocabulary.

    Args:
        student_logits: (..., V).
        teacher_topk: (..., k) the teacher's kept logits.
        indices: (..., k) their vocabulary ids.
    """
    V, k = student_logits.shape[-1], teacher_topk.shape[-1]
    log_p_s = F.log_softmax(student_logits.reshape(-1, V) / temperature, dim=-1).gather(-1, indices.reshape(-1, k))
    log_p_t = F.log_softmax(teacher_topk.reshape(-1, k) / temperature, dim=-1)  # (N, k)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    return temperature**2 * kl.mean()


def hard_loss(student_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the true next symbol; (..., V) logits, (...) targets."""
    V = student_logits.shape[-1]
    return F.cross_entropy(student_logits.reshape(-1, V), targets.reshape(-1))


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Evenly spaced (student i, teacher j) pairs; the last student layer meets the last teacher layer.

    >>> layer_map(2, 4)
    [(0, 1), (1, 3)]
    """
    return [(i, round((i + 1) * teacher_layers / student_layers) - 1) for i in range(student_layers)]


class HiddenProjection(nn.Module):
    """P in L_hidden: one learned linear map per mapped layer pair, identity when widths match."""

    def __init__(self, pairs: Sequence[tuple[int, int]], student_width: int, teacher_width: int) -> None:
        super().__init__()
        self.pairs = list(pairs)
        same = student_width == teacher_width
        self.maps = nn.ModuleList(
            nn.Identity() if same else nn.Linear(student_width, teacher_width, bias=False) for _ in self.pairs
        )

    def forward(
        self, student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor] | Mapping[int, torch.Tensor]
    ) -> torch.Tensor:
        """Mean over pairs of MSE(P·h_s, h_t); states are (B, T, width) per layer (teacher's by layer index)."""
        losses = [
            F.mse_loss(proj(student_states[i]), teacher_states[j])
            for proj, (i, j) in zip(self.maps, self.pairs, strict=True)
        ]
        return torch.stack(losses).mean()


@dataclass(frozen=True)
class LossWeights:
    temperature: float  # T > 0
    lam: float  # λ ≥ 0, weight of the hard-label term
    beta: float  # β ≥ 0, weight of the hidden-state term; 0 is plain logit distillation


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    weights: LossWeights,
    *,
    hidden: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    hard: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = hard_loss,
) -> torch.Tensor:
    """L = L_soft + λ·L_hard + β·L_hidden; `hidden` is L_hidden, already computed (None when β = 0).
    With `teacher_indices` (..., k), `teacher_logits` are the teacher's top-k logits at those ids; `hard` is
    the task's L_hard (cross-entropy by default)."""
    if teacher_indices is None:
        loss = soft_loss(student_logits, teacher_logits, weights.temperature)
    else:
        loss = soft_loss_topk(student_logits, teacher_logits, teacher_indices, weights.temperature)
    loss = loss + weights.lam * hard(student_logits, targets)
    if hidden is not None:
        loss = loss + weights.beta * hidden
    return loss
