"""Teacher outputs computed once per sweep and shared by every trial's distillation.

Instead of a teacher forward pass in every step of every trial, the sweep runs the teacher once over a
fixed pool of training examples (windows, for language models; by default as many as the longest
distillation draws, so a student sees as many distinct examples as it would with the teacher live) and
stores its logits (and, when any trial can weigh the hidden-state term, its per-layer hidden states) in
float16. Distillation then takes its batches from the pool in a seeded random order, each example once per
pass (`Passes`). For a small
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

    inputs: torch.Tensor  # (N, ...) the task's inputs, e.g. (N, T) token ids
    targets: torch.Tensor  # (N, ...) their targets, e.g. (N, T) next tokens
    logits: torch.Tensor  # (N, ..., V) float16, or (N, ..., k) with `top_k`
    indices: torch.Tensor | None  # (N, ..., k) int64 ids of the kept logits (top-k only)
    hidden: torch.Tensor | None  # (L, N, ..., C) float16 hidden states of the `kept` layers; None when not stored
    teacher_layers: int  # the teacher's depth
    kept: tuple[int, ...] | None = None  # the teacher layers `hidden` holds, in order (None: all of them)

    def save(self, path: str | os.PathLike[str]) -> None:
        blob = {"inputs": self.inputs, "targets": self.targets, "logits": self.logits, "indices": self.indices,
                "hidden": self.hidden, "teacher_layers": self.teacher_layers, "kept": self.kept}
        torch.save(blob, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TeacherOutputs":
        return cls(**torch.load(path, weights_only=True, mmap=True))

    def batch(
        self, rows: torch.Tensor, *, hidden_layers: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """The pool's `rows` (a `Passes` draw): inputs, targets, teacher logits (as float32), their ids (top-k)
        or None, and the teacher's hidden states for `hidden_layers`."""
        states = []
        if hidden_layers:
            if self.hidden is None:
                raise ValueError("these teacher outputs hold no hidden states; rebuild them with hidden=True")
            at = {j: i for i, j in enumerate(self.kept if self.kept is not None else range(self.teacher_layers))}
            missing = sorted(set(hidden_layers) - set(at))
            if missing:
                raise ValueError(f"these teacher outputs keep the hidden states of teacher layers {sorted(at)}, not {missing}; "
                                 "rebuild them for this student (its depth or `distill.layer_map` is outside the sweep's)")
            states = [self.hidden[at[j]][rows].float() for j in hidden_layers]
        indices = self.indices[rows] if self.indices is not None else None
        return self.inputs[rows], self.targets[rows], self.logits[rows].float(), indices, states


class Passes:
    """The rows of a pool of `n` examples in a random order, each once per pass over the pool (then a new
    order): a student sees as many distinct examples as it draws, up to the pool's size. Pass p's order is a
    function of `seed` and p alone, so a stream started at draw `start` (a resumed student) continues the
    very order an uninterrupted one takes.

        >>> p = Passes(5, seed=0)
        >>> sorted(torch.cat([p.take(2), p.take(2), p.take(1)]).tolist())
        [0, 1, 2, 3, 4]
        >>> p.take(3).tolist() == Passes(5, seed=0, start=5).take(3).tolist()
        True
    """

    def __init__(self, n: int, seed: int, start: int = 0) -> None:
        self.n, self.seed = n, seed
        self.passes, self.at = divmod(start, n)
        self.order = self._order(self.passes)

    def _order(self, index: int) -> torch.Tensor:
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(mix(self.seed, index)))

    def take(self, k: int) -> torch.Tensor:
        parts = []
        while k > 0:
            if self.at == self.n:
                self.passes += 1
                self.order, self.at = self._order(self.passes), 0
            part = self.order[self.at : self.at + k]
            self.at += len(part)
            k -= len(part)
            parts.append(part)
        return torch.cat(parts)


def mix(seed: int, index: int) -> int:
    """A generator seed for item `index` of stream `seed` (a step's batch, a pass's order).

        >>> mix(0, 1) != mix(1, 0)
        True
    """
    return (seed * 1_000_003 + index * 7_919 + 1) % (1 << 62)


def pool_precision(setting: str, device: torch.device | str) -> str:
    """The precision of the teacher's pass over the pool (`distill.pool_precision`): "bf16" or "fp32" as set, or
    for "auto" bf16 where `device` multiplies bfloat16 natively (a CUDA GPU that supports it; a CPU with AMX,
    where it runs about twice as fast as float32), else fp32.

        >>> pool_precision("fp32", "cpu"), pool_precision("bf16", "cpu")
        ('fp32', 'bf16')
    """
    if setting != "auto":
        return setting
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # torch >= 2.8; an older one is taken for no AMX
    return "bf16" if device.type == "cpu" and capabilities is not None and capabilities().get("amx_bf16", False) else "fp32"


@torch.inference_mode()
def compute_teacher_outputs(
    teacher: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, *, hidden: bool, top_k: int | None,
    batch_size: int = 64, layers: tuple[int, ...] | None = None, precision: str = "fp32",
) -> TeacherOutputs:
    """Run `teacher` once over a pool of training examples.

    Args:
        inputs, targets: (N, ...) the pool, drawn by the task (`Task.batch`).
        hidden: also keep the layers' outputs (needed when any trial has beta > 0).
        top_k: keep only the k largest logits per position (None: all of them).
        layers: the teacher layers whose outputs to keep (None: every layer).
        precision: "bf16" runs the teacher under `torch.autocast` in bfloat16, "fp32" as it is (see
            `pool_precision`); the outputs are stored as float16 either way.
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision {precision!r}: use 'fp32' or 'bf16'")
    teacher.eval()
    device = next(teacher.parameters()).device  # the pool runs where the teacher is (a GPU with use_gpu)
    logits = indices = states = None
    depth = 0
    for i in range(0, len(inputs), batch_size):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out, layer_states = teacher(inputs[i : i + batch_size].to(device), hidden=hidden)  # (b, ..., V)
        rows = slice(i, i + len(out))
        idx = None
        if top_k is not None:
            out, idx = out.topk(top_k, dim=-1)
        if logits is None:  # the whole pool's buffers, filled in place: no list of batches to concatenate
            logits = torch.empty((len(inputs), *out.shape[1:]), dtype=torch.float16)
            indices = torch.empty((len(inputs), *idx.shape[1:]), dtype=idx.dtype) if idx is not None else None
        logits[rows] = out
        if idx is not None:
            indices[rows] = idx
        if hidden:
            depth = len(layer_states)
            kept = [layer_states[j] for j in layers] if layers is not None else layer_states
            if states is None:
                states = torch.empty((len(kept), len(inputs), *kept[0].shape[1:]), dtype=torch.float16)
            for k, state in enumerate(kept):
                states[k, rows] = state
    return TeacherOutputs(
        inputs=inputs,
        targets=targets,
        logits=logits,
        indices=indices,
        hidden=states,
        teacher_layers=depth,
        kept=tuple(layers) if hidden and layers is not None else None,
    )
