"""Teacher outputs computed once per sweep and shared by every trial's distillation.

Instead of a teacher forward pass in every step of every trial, the sweep runs the teacher once over a
fixed pool of training windows and stores its logits (and, when any trial can weigh the hidden-state term,
its per-layer hidden states) in float16. Distillation then samples batches from the pool. For a small
vocabulary the full logits are stored; with `top_k` only the k largest logits per position are kept and
the soft loss runs over those k entries (the rest of the teacher's mass is dropped, as in top-k KD).

The file is memory-mapped by every reader, so concurrent trials on a node share one copy in the page cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
import torch

from torch import nn


@dataclass(frozen=True)
class TeacherOutputs:
    """A pool of training windows with the teacher's outputs on them."""

    blocks: torch.Tensor  # (N, T+1) int64 token ids: inputs are [:, :-1], next-symbol targets [:, 1:]
    logits: torch.Tensor  # (N, T, V) float16, or (N, T, k) with `top_k`
    indices: torch.Tensor | None  # (N, T, k) int64 vocabulary ids of the kept logits (top-k only)
    hidden: torch.Tensor | None  # (L, N, T, C) float16 per-layer block outputs; None when not stored
    teacher_layers: int

    def save(self, path: str | os.PathLike[str]) -> None:
        blob = {"blocks": self.blocks, "logits": self.logits, "indices": self.indices, "hidden": self.hidden,
                "teacher_layers": self.teacher_layers}
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TeacherOutputs":
        return cls(**torch.load(path, weights_only=True, mmap=True))

    def batch(
        self, batch_size: int, generator: torch.Generator, *, hidden_layers: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """A random batch: inputs (B, T), targets (B, T), teacher logits (B, T, V or k) as float32, their
        vocabulary ids (B, T, k) or None, and the teacher's hidden states for `hidden_layers` (B, T, C)."""
        rows = torch.randint(len(self.blocks), (batch_size,), generator=generator)
        chunk = self.blocks[rows]
        states = []
        if hidden_layers:
            if self.hidden is None:
                raise ValueError("these teacher outputs hold no hidden states; rebuild them with hidden=True")
            states = [self.hidden[j][rows].float() for j in hidden_layers]
        indices = self.indices[rows] if self.indices is not None else None
        return chunk[:, :-1], chunk[:, 1:], self.logits[rows].float(), indices, states


@torch.inference_mode()
def compute_teacher_outputs(
    teacher: nn.Module, train: torch.Tensor, *, blocks: int, seed: int, hidden: bool, top_k: int | None,
    context: int | None = None, batch_size: int = 64,
) -> TeacherOutputs:
    """Run `teacher` once over `blocks` random windows of the training split.

    Args:
        train: (N,) training token ids; windows are drawn with a generator seeded by `seed`.
        hidden: also keep every layer's output (needed when any trial has beta > 0).
        top_k: keep only the k largest logits per position (None: all of them).
        context: tokens per window (None: the teacher's own `cfg.context`, for the built-in GPT).
    """
    context = context if context is not None else teacher.cfg.context
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(len(train) - context - 1, (blocks,), generator=gen)
    windows = train[starts[:, None] + torch.arange(context + 1)].long()  # (N, T+1)
    logits, indices, states = [], [], []
    teacher.eval()
    for i in range(0, blocks, batch_size):
        out, layer_states = teacher(windows[i : i + batch_size, :-1], hidden=hidden)  # (b, T, V)
        if top_k is not None:
            out, idx = out.topk(top_k, dim=-1)
            indices.append(idx)
        logits.append(out.half())
        if hidden:
            states.append(torch.stack(layer_states).half())  # (L, b, T, C)
    return TeacherOutputs(
        blocks=windows,
        logits=torch.cat(logits),
        indices=torch.cat(indices) if top_k is not None else None,
        hidden=torch.cat(states, dim=1) if hidden else None,
        teacher_layers=teacher.num_layers,
    )

