"""Mixed precision: a width per tensor under a budget of bits (quantize `allocation: sensitivity`).

Every quantizable tensor t (each Linear, the embeddings, the head) and every candidate width b get

- a **cost**: the bits t takes stored at b (its levels, scales and zero points as its method encodes them,
  measured by encoding the tensor rounded at b; 16 and 32 bits: that many per weight), and
- a **sensitivity**: how much the model's output distribution moves when t alone is rounded to b. Three
  estimates (`sensitivity`):
  - `fisher` (default): ½ Σᵢ Fᵢᵢ (wᵢ − q_b(wᵢ))², Fᵢᵢ the diagonal Fisher information of the model's output
    distribution (squared gradients of log p(ŷ | x), ŷ sampled from the model itself, one window at a time):
    the second-order estimate of KL(p ‖ p_b). One forward and backward pass per calibration window.
  - `kl`: KL(p ‖ p_b) measured, averaged over positions: a forward pass of the calibration windows per tensor
    and width (exact, and the costly one).
  - `mse`: Σᵢ (wᵢ − q_b(wᵢ))², the rounding error alone: no data (what a model measured before training uses).

Rounding is the method's own `quantize_tensor` on the trial's grid (GPTQ's compensation is not modelled: it
is scored as round-to-nearest on the same grid). The widths then minimise the summed sensitivity with the
summed cost within `effective_bits` × the tensors' weights (`core.allocation.allocate`, exact). Sensitivities
do not depend on the budget: they are computed once per model, masks, grid, candidates, estimate and data,
and cached by the sweep (`Calibration.tables`), so every budget a sweep tries on one student reuses them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.core.allocation import Infeasible, allocate
from orchestrator.core.keys import tensors_digest
from orchestrator.techniques.base import FLOAT_BITS
from orchestrator.techniques.quantize import Calibration, EncodedTensor, QuantSpec
from orchestrator.techniques.weights import quantizable_weights

SENSITIVITY_FORMAT = 1  # part of the cache key of sensitivity tables: raise it when what they hold changes
BATCH = 8  # windows per forward pass of the `kl` estimate


class _Count:
    """A `BlobStore` that only counts: the bits an encoding stores before entropy coding."""

    def __init__(self) -> None:
        self.bits = 0

    def add(self, data: bytes, *alternatives: tuple[str, bytes], floats: bool = False) -> list[Any]:
        self.bits += 8 * len(data)
        return [0, len(data)]


def stored_bits(encoded: EncodedTensor) -> int:
    """The bits `encoded` takes in the artifact before entropy coding, every weight counted (a pruned one too):
    b-bit levels packed densely, scales, zero points, centroids."""
    store = _Count()
    encoded.encode(store, slice(None))
    return store.bits


@dataclass(frozen=True)
class Allocation:
    """A model's widths and why: per tensor its width, stored bits and sensitivity score at that width."""

    estimate: str  # fisher | kl | mse
    budget: float  # the asked bits per weight
    rows: tuple[tuple[str, int, int, float], ...]  # (tensor, width, stored bits, score)

    @property
    def widths(self) -> tuple[tuple[str, int], ...]:
        return tuple((name, width) for name, width, _, _ in self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "budget": self.budget, "columns": ["tensor", "bits", "stored_bits", "score"],
                "data": [list(r) for r in self.rows]}


def _rounded(w: torch.Tensor, spec: QuantSpec, bits: int, mask: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """`w` at width `bits` as the model would run it, and the bits it takes stored."""
    kind = FLOAT_BITS.get(bits)
    if kind == "float32":
        return w.detach().float(), 32 * w.numel()
    if kind == "float16":
        return w.detach().half().float(), 16 * w.numel()
    one = QuantSpec(spec.method, bits, spec.group_size)
    qt = spec.method.quantize_tensor(w.detach(), one, mask)
    return qt.dequantize(mask), stored_bits(qt)


def _fisher(model: nn.Module, weights: Mapping[str, torch.Tensor], inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The diagonal Fisher information of the model's output distribution per position, per weight: the squared
    gradient of a window's Σₜ log p(ŷₜ | x), ŷ drawn from the model (seeded), summed over windows and divided by
    the positions (a window's Fisher is the sum of its positions': the cross terms vanish in expectation), so
    that ½ Σ F δ² estimates the KL divergence per position, as `kl` measures it."""
    generator = torch.Generator().manual_seed(0)
    fisher = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    was = {name: w.requires_grad for name, w in weights.items()}
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    positions = 0
    for p in params:
        p.requires_grad_(False)
    for w in weights.values():
        w.requires_grad_(True)
    try:
        for x in inputs.split(1):
            with torch.enable_grad():
                logits = model(x)[0].float()
                logits = logits.reshape(-1, logits.shape[-1])
                positions += logits.shape[0]
                drawn = torch.multinomial(F.softmax(logits.detach(), -1), 1, generator=generator).squeeze(-1)
                grads = torch.autograd.grad(-F.cross_entropy(logits, drawn, reduction="sum"), list(weights.values()))
            for name, g in zip(weights, grads):
                fisher[name] += g.float() ** 2
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for name, w in weights.items():
            w.requires_grad_(was[name])
    return {name: f / max(1, positions) for name, f in fisher.items()}


def _log_probs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(positions, classes) log-probabilities of the model's outputs on `x`."""
    logits = model(x)[0].float()
    return F.log_softmax(logits.reshape(-1, logits.shape[-1]), -1)


@torch.no_grad()
def _kl(model: nn.Module, inputs: torch.Tensor, reference: list[torch.Tensor]) -> float:
    """Mean KL(reference ‖ model) per position over `inputs`, the reference's log-probabilities given per batch."""
    total, count = 0.0, 0
    for x, ref in zip(inputs.split(BATCH), reference):
        logp = _log_probs(model, x)
        total += float((ref.exp() * (ref - logp)).sum())
        count += ref.shape[0]
    return max(0.0, total / max(1, count))  # a KL divergence; float rounding can dip below 0


@torch.no_grad()
def sensitivity_table(model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor], estimate: str,
                      inputs: torch.Tensor | None) -> dict[str, np.ndarray]:
    """Per quantizable tensor (`names`) and candidate width (`widths`): `costs` (stored bits) and `scores`
    (the estimate's sensitivity), computed on `inputs` (None: `mse`, which needs none)."""
    method = spec.method
    weights = quantizable_weights(model, embeddings=method.embeddings)
    widths = sorted(method.candidate_bits)
    was_training = model.training
    model.eval()
    fisher = _fisher(model, weights, inputs) if estimate == "fisher" else {}
    reference = [_log_probs(model, x) for x in inputs.split(BATCH)] if estimate == "kl" else []
    costs = np.zeros((len(weights), len(widths)), dtype=np.int64)
    scores = np.zeros((len(weights), len(widths)), dtype=np.float64)
    for i, (name, w) in enumerate(weights.items()):
        original = w.detach().clone()
        for j, bits in enumerate(widths):
            rounded, costs[i, j] = _rounded(original, spec, bits, masks.get(name))
            error = (rounded - original.float()) ** 2
            if estimate == "fisher":
                scores[i, j] = 0.5 * float((fisher[name] * error).sum())
            elif estimate == "kl":
                w.copy_(rounded)
                scores[i, j] = 0.0 if bits == 32 else _kl(model, inputs, reference)
                w.copy_(original)
            else:
                scores[i, j] = float(error.sum())
    model.train(was_training)
    return {"names": np.array(list(weights)), "widths": np.array(widths), "costs": costs, "scores": scores,
            "numel": np.array([w.numel() for w in weights.values()], dtype=np.int64)}


def sensitivity_key(model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor]) -> tuple[Any, ...]:
    """Everything a sensitivity table depends on besides the data (which the sweep's cache adds): the model's exact
    weights and masks, how its method rounds one tensor, the grid's group size, the candidates, the estimate and
    its windows. Not the budget, recovery, calibration or allocation settings."""
    method = spec.method
    rounding = method.rounding_key()
    windows = method.sensitivity_windows if method.sensitivity != "mse" else 0
    group = spec.group_size if method.granularity == "group" else 0
    return (SENSITIVITY_FORMAT, tensors_digest(model.state_dict()), tensors_digest(masks), rounding, group,
            sorted(method.candidate_bits), method.sensitivity, windows)


def allocate_widths(model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor],
                    calibration: Calibration | None) -> tuple[QuantSpec, Allocation]:
    """`spec` (a budget of `effective_bits`) with a width for every quantizable tensor of `model`, and the table
    behind it. Without `calibration` (an untrained model measured before training) the estimate is `mse`."""
    method = spec.method
    estimate = method.sensitivity if calibration is not None else "mse"

    def build() -> dict[str, np.ndarray]:
        inputs = calibration.inputs(method.sensitivity_windows) if calibration is not None and estimate != "mse" else None
        return sensitivity_table(model, spec, masks, estimate, inputs)

    if calibration is not None and calibration.tables is not None:
        table = calibration.tables(sensitivity_key(model, spec, masks), build)
    else:
        table = build()
    names, widths, costs, scores = list(table["names"]), [int(b) for b in table["widths"]], table["costs"], table["scores"]
    budget = int(spec.budget * int(table["numel"].sum()))
    try:
        choice = allocate(scores, costs, budget)
    except Infeasible:
        low = costs.min(axis=1).sum() / table["numel"].sum()
        raise ValueError(f"`params.effective_bits` {spec.budget:g} is below what this model's tensors take at their "
                         f"narrowest candidate width ({low:.3f} bits per weight, scales included); raise the budget's "
                         "low end or add a narrower width to `candidate_bits`") from None
    rows = tuple((str(name), widths[j], int(costs[i, j]), float(scores[i, j])) for i, (name, j) in enumerate(zip(names, choice)))
    allocation = Allocation(estimate=estimate, budget=float(spec.budget), rows=rows)
    return QuantSpec(method, spec.bits, spec.group_size, widths=allocation.widths, budget=spec.budget), allocation


__all__ = ["Allocation", "allocate_widths", "sensitivity_key", "sensitivity_table", "stored_bits"]
