"""Models the stages compress, and the one architecture registry that checkpoints and artifacts use.

A *compressible model* is an `nn.Module` with:

- ``forward(x, *, hidden=False) -> (output, states)``: the output (LM logits (B, T, V), class logits
  (B, C), ...) and, with `hidden`, a list of per-layer hidden states (B, ..., C) for the hidden-state
  term of the distillation loss (an empty list when the model has none);
- ``architecture`` (a registered name) and ``config_dict()``: a JSON-able dict that `build` turns back
  into an untrained model of the same shape;
- optionally ``output_layer()``: the layer that maps to the outputs (a pruning option leaves it dense);
- optionally, for structured pruning, ``structured_units(kind)`` (one `UnitGroup` per block) and
  ``resized(kind, n)`` (a fresh model with `n` units of that kind per block).

The built-in GPT and Hugging Face causal LMs implement all of it; a user's model is wrapped by its task
(`tasks.python`). `describe` / `build` are the only way a model is named in storage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

UnitKind = Literal["mlp", "heads"]
ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_architecture(name: str) -> Callable[[type], type]:
    """Class decorator: `name` in artifacts and checkpoints rebuilds the class by `cls.from_config_dict`."""

    def register(cls: type) -> type:
        cls.architecture = name
        ARCHITECTURES[name] = cls.from_config_dict
        return cls

    return register


def describe(model: nn.Module) -> dict[str, Any]:
    """``{"architecture": name, "config": {...}}``: what `build` (or the task) rebuilds the model from."""
    if not hasattr(model, "config_dict") or not hasattr(model, "architecture"):
        raise TypeError(f"a {type(model).__name__} is not a compressible model (no architecture / config_dict)")
    return {"architecture": model.architecture, "config": model.config_dict()}


def build(description: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of a registered architecture from `describe`'s dict."""
    name = description["architecture"]
    if name not in ARCHITECTURES:
        raise KeyError(f"architecture {name!r} is not registered (known: {', '.join(sorted(ARCHITECTURES))}); "
                       "a model of a user task is rebuilt by that task: pass task=")
    return ARCHITECTURES[name](dict(description["config"]))


def output_layer(model: nn.Module) -> nn.Module | None:
    """The model's output layer, or None when it names none."""
    get = getattr(model, "output_layer", None)
    return get() if callable(get) else None


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


def supports_structured_pruning(model: nn.Module) -> bool:
    return callable(getattr(model, "structured_units", None)) and callable(getattr(model, "resized", None))


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


def unit_index(units: int, size: int, *, offsets: tuple[int, ...] | None = None) -> torch.Tensor:
    """Positions of each unit: unit u covers ``u·size + [0, size)``, (units, size); with `offsets`, that
    range after each offset (the q, k and v sections of a fused projection), (units, sections, size)."""
    base = torch.arange(units)[:, None] * size + torch.arange(size)  # (units, size)
    return base if offsets is None else torch.stack([base + o for o in offsets], dim=1)


# The built-in architectures register themselves on import.
from orchestrator.models import gpt as _gpt  # noqa: E402,F401
from orchestrator.models import hf as _hf  # noqa: E402,F401
