"""What the techniques ask of a model: the compressible-model protocol.

A *compressible model* is an `nn.Module` with:

- ``forward(x, *, hidden=False) -> (output, states)``: the output (LM logits (B, T, V), class logits
  (B, C), ...) and, with `hidden`, a list of per-layer hidden states (B, ..., C) for the hidden-state
  term of the distillation loss (an empty list when the model has none);
- ``architecture`` (a registered name, `models.register_architecture`) and ``config_dict()``: a JSON-able
  dict from which an untrained model of the same shape is built again;
- optionally ``output_layer()``: the layer that maps to the outputs (a pruning option leaves it dense);
- optionally, for structured pruning, ``structured_units(kind)`` (one `UnitGroup` per block) and
  ``resized(kind, n)`` (a fresh model with `n` units of that kind per block).

The built-in GPT and Hugging Face causal LMs implement all of it (`models/`); a user's model is wrapped by
its task (`tasks.python`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

UnitKind = Literal["mlp", "heads"]


def output_layer(model: nn.Module) -> nn.Module | None:
    """The model's output layer, or None when it names none."""
    get = getattr(model, "output_layer", None)
    return get() if callable(get) else None


def supports_structured_pruning(model: nn.Module) -> bool:
    return callable(getattr(model, "structured_units", None)) and callable(getattr(model, "resized", None))


@dataclass(frozen=True)
class UnitSlice:
    """Where the units of one block sit in one parameter: unit u is ``param.index_select(dim, index[u])``."""

    param: str  # state-dict name
    dim: int  # the axis the units lie along (0: output rows, 1: input columns)
    index: torch.Tensor  # (units, per_unit) int64 positions along `dim`; (units, sections, size) when each unit
    # has a slice in several sections of a fused parameter (q, k, v): the kept units stay section-major


@dataclass(frozen=True)
class UnitGroup:
    """The units (MLP neurons, attention heads or key/value groups) of one block: removing unit u removes
    its slice of every listed parameter."""

    slices: tuple[UnitSlice, ...]

    @property
    def units(self) -> int:
        return int(self.slices[0].index.shape[0])


def unit_index(units: int, size: int, *, offsets: tuple[int, ...] | None = None) -> torch.Tensor:
    """Positions of each unit: unit u covers ``u·size + [0, size)``, (units, size); with `offsets`, that
    range after each offset (the q, k and v sections of a fused projection), (units, sections, size).

        >>> unit_index(2, 3).tolist(), unit_index(2, 1, offsets=(0, 4)).tolist()
        ([[0, 1, 2], [3, 4, 5]], [[[0], [4]], [[1], [5]]])
    """
    base = torch.arange(units)[:, None] * size + torch.arange(size)  # (units, size)
    return base if offsets is None else torch.stack([base + o for o in offsets], dim=1)
