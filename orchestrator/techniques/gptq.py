"""GPTQ (Frantar et al., 2023): post-training quantization that compensates each weight's rounding error.

A Linear layer y = W x is quantized one input column at a time. The layer's inputs on calibration windows
give H = 2/N · Σ x xᵀ, the Hessian of the output error ‖W x − Ŵ x‖²; after column j is rounded, the error it
leaves is spread over the columns not yet rounded, weighted by the inverse Hessian (the optimal brain
surgeon update), so the layer's outputs move as little as the grid allows. Columns go in blocks of 128 with
lazy updates, and with `act_order` in decreasing order of H's diagonal (the inputs that carry most signal
first).

The grid is the affine min-max one of `rounding.py` (zero exact), so the result is a `QuantizedTensor` the
artifact already knows how to store. Its scales come from the weights as GPTQ reaches them: per group when a
group starts (`act_order` off), or from the original weights (`act_order` on: "static groups", since
columns are visited out of order); per channel and per tensor from the original weights. Pruned weights
(a mask) are rounded to zero, and their error is compensated like any other.

The model is processed one block at a time (the blocks are its largest `nn.ModuleList`: a built-in GPT's
`blocks`, a Hugging Face model's decoder layers): every block is calibrated on the inputs the model's own
forward gives it once the blocks before it are quantized (caught by a hook, the earlier blocks replaying
their outputs), so whatever the forward does between blocks (an activation, a residual sum) is seen. Layers outside the blocks (an untied LM head) come last, from one forward pass of
the quantized model, an LM head tied to the token embedding among them (the embedding then looks up the
head's levels); other embeddings use round-to-nearest (they are lookups, not products).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from orchestrator.core.keys import tensors_digest
from orchestrator.techniques.base import check, register_technique
from orchestrator.techniques.quantize import ALLOCATION_FIELDS, Calibration, Quantized, QuantSpec, layout
from orchestrator.techniques.rounding import AffineQuantization, QuantizedTensor
from orchestrator.techniques.weights import quantizable_weights

GPTQ_FORMAT = 4  # part of the cache key of GPTQ's results: raise it when what they hold changes (2: float16 scales; 3: stored with their encoding; 4: blocks calibrated on the inputs the model's forward gives them)


@torch.no_grad()
def gptq_tensor(
    w: torch.Tensor, H: torch.Tensor, spec: QuantSpec, *, mask: torch.Tensor | None = None, act_order: bool = True,
    damping: float = 0.01, block: int = 128,
) -> QuantizedTensor:
    """Quantize one (rows, cols) weight given H (cols, cols) of its inputs; see the module docstring."""
    method = spec.method
    W = w.detach().float().clone()
    rows, cols = W.shape
    H = H.detach().double().clone()
    dead = torch.diag(H) == 0  # inputs never seen in calibration: any value fits them
    H[dead, dead] = 1.0
    R, G, g = layout(W.shape, method.granularity, spec.group_size)
    qparams = method.qparams
    levels = 2**spec.bits - 1
    keep = mask.bool() if mask is not None else None
    if keep is not None:
        W[~keep] = 0.0

    # scales: static (from the original weights) unless groups can be fitted as GPTQ reaches them
    dynamic = method.granularity == "group" and not act_order
    scale = torch.ones(R, G)
    zero = torch.zeros(R, G)
    if not dynamic:
        static = method.quantize_tensor(W, spec)
        scale, zero = static.scale.clone(), static.zero_point.float()
    if dynamic:
        block = g  # a block is a group: its columns have their updates before its scale is fitted
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H = W[:, perm], H[perm][:, perm]
    keep_p = keep[:, perm] if keep is not None else None
    H += damping * torch.mean(torch.diag(H)) * torch.eye(cols, dtype=H.dtype)
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()  # upper Cholesky of H⁻¹

    Q = torch.zeros(rows, cols, dtype=torch.uint8)  # levels, in visiting order
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, E1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1)
        if dynamic:  # this block is one group: fit its scale now, from the updated weights
            grp = i1 // g
            s, z = qparams(W1.reshape(rows, 1, -1), spec.bits)
            scale[:, grp], zero[:, grp] = s[:, 0], z[:, 0]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            grp = 0 if method.granularity != "group" else col // g
            s = scale[:, grp] if R > 1 else scale[0, grp].expand(rows)
            z = zero[:, grp] if R > 1 else zero[0, grp].expand(rows)
            w_col = W1[:, i]
            lvl = (torch.round(w_col / s) + z).clamp_(0, levels)
            if keep_p is not None:
                lvl = torch.where(keep_p[:, i1 + i], lvl, z)  # a pruned weight holds the zero level
            Q[:, i1 + i] = lvl.to(torch.uint8)
            err = (w_col - (lvl - z) * s) / Hinv[i1 + i, i1 + i]
            W1[:, i:] -= err[:, None] * Hinv[i1 + i, i1 + i : i2][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    q = torch.empty_like(Q)
    q[:, perm] = Q
    return QuantizedTensor(q=q, scale=scale.float(), zero_point=zero.round().to(torch.uint8), bits=spec.bits,
                           granularity=method.granularity, group_size=g, symmetric=False)


class _Hessian:
    """A forward hook on a Linear layer: accumulates 2/N · Σ x xᵀ over the rows of its inputs."""

    def __init__(self, module: nn.Linear) -> None:
        self.H = torch.zeros(module.in_features, module.in_features, dtype=torch.float64)
        self.n = 0
        self.handle = module.register_forward_hook(self)

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
        total = self.n + x.shape[0]
        self.H *= self.n / total
        self.H += (2.0 / total) * x.T @ x
        self.n = total


class _Stop(Exception):
    pass


def _blocks(model: nn.Module) -> nn.ModuleList | None:
    """The model's repeated blocks: its ModuleList holding the most Linear layers."""
    best, count = None, 0
    for m in model.modules():
        if isinstance(m, nn.ModuleList):
            n = sum(isinstance(x, nn.Linear) for x in m.modules())
            if n > count:
                best, count = m, n
    return best


class _Replay(nn.Module):
    """Stands in for a block already quantized: returns, call after call, the outputs it gave on its real inputs
    (so the model's own forward, whatever it does between blocks, carries them to the next block)."""

    def __init__(self, outputs: Sequence[Any]) -> None:
        super().__init__()
        self.outputs, self.calls = outputs, 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.outputs[self.calls - 1]


def _block_inputs(model: nn.Module, blocks: nn.ModuleList, i: int, batches: Sequence[torch.Tensor],
                  outputs: Sequence[Sequence[Any]]) -> list[tuple[tuple, dict]]:
    """What block `i` is called with by the model's own forward for each calibration batch: the model runs with
    the blocks before it replaying their (quantized) outputs, and stops at block `i`. Whatever the forward does
    between blocks (an activation, a residual sum, a norm) reaches block `i` as it does in use."""
    seen: list[tuple[tuple, dict]] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        kwargs = dict(kwargs)
        for cache in ("past_key_value", "past_key_values"):  # a Hugging Face layer must not grow a KV cache
            if cache in kwargs:
                kwargs[cache] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        seen.append((args, kwargs))
        raise _Stop

    originals = [blocks[j] for j in range(i)]
    for j in range(i):
        blocks[j] = _Replay(outputs[j])
    handle = blocks[i].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for x in batches:
            try:
                model(x)
            except _Stop:
                pass
    finally:
        handle.remove()
        for j, block in enumerate(originals):
            blocks[j] = block
    return seen


def _quantize_layers(layers: dict[str, nn.Linear], stats: dict[str, _Hessian], spec: QuantSpec, masks: Mapping[str, torch.Tensor],
                     out: dict[str, QuantizedTensor], names: dict[int, str], **options: Any) -> None:
    """GPTQ each layer at its own width (`spec.width`); a layer a mixed spec keeps in float: its float16 copy, or
    left alone."""
    for name, linear in layers.items():
        stats[name].handle.remove()
        key = names[id(linear.weight)]
        one = spec.at(key)
        if not one.integer:
            if one.float16:
                linear.weight.copy_(linear.weight.half().float())
            continue
        qt = gptq_tensor(linear.weight, stats[name].H, one, mask=masks.get(key), **options)
        linear.weight.copy_(qt.dequantize(masks.get(key)))
        out[key] = qt


@torch.no_grad()
def gptq_quantize_(
    model: nn.Module, spec: QuantSpec, batches: Sequence[torch.Tensor], masks: Mapping[str, torch.Tensor] | None = None,
    *, act_order: bool = True, damping: float = 0.01,
) -> dict[str, QuantizedTensor]:
    """GPTQ every quantizable Linear weight of `model` in place (embeddings: round-to-nearest), calibrated
    on `batches` (model inputs); returns the integer form of every weight, as `QuantizeMethod.quantize` does."""
    masks = masks or {}
    was_training = model.training
    model.eval()
    targets = quantizable_weights(model, embeddings=spec.method.embeddings)
    by_tensor = {id(w): name for name, w in targets.items()}
    # each weight once, by the name `quantizable_weights` gives it: an LM head tied to the token embedding is
    # quantized as the head (a product, whose inputs GPTQ sees), and the embedding looks its rows up
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in by_tensor}
    linear_weights = {by_tensor[id(m.weight)] for m in linears.values()}  # done by GPTQ (in integer form or in float)
    out: dict[str, QuantizedTensor] = {}
    options = {"act_order": act_order, "damping": damping}

    blocks = _blocks(model)
    inside: set[str] = set()
    if blocks is not None and len(blocks):
        prefix = next(n for n, m in model.named_modules() if m is blocks)
        outputs: list[list[Any]] = []  # each quantized block's outputs on its real inputs, batch by batch
        for i, block in enumerate(blocks):
            calls = _block_inputs(model, blocks, i, batches, outputs)
            here = {n: m for n, m in linears.items() if n.startswith(f"{prefix}.{i}.")}
            inside |= set(here)
            stats = {n: _Hessian(m) for n, m in here.items()}
            for args, kwargs in calls:
                block(*args, **kwargs)
            _quantize_layers(here, stats, spec, masks, out, by_tensor, **options)
            outputs.append([block(*args, **kwargs) for args, kwargs in calls])
    rest = {n: m for n, m in linears.items() if n not in inside}
    if rest:  # e.g. an untied LM head: its inputs from the quantized blocks
        stats = {n: _Hessian(m) for n, m in rest.items()}
        for x in batches:
            model(x)
        _quantize_layers(rest, stats, spec, masks, out, by_tensor, **options)
    for name, w in targets.items():  # embeddings (and any weight not in a Linear): round to nearest
        one = spec.at(name)
        if name in linear_weights:
            continue
        if one.integer:
            qt = spec.method.quantize_tensor(w, one)
            w.copy_(qt.dequantize(masks.get(name)))
            out[name] = qt
        elif one.float16:
            w.copy_(w.half().float())
    model.train(was_training)
    return out


@register_technique("gptq")
@dataclass(frozen=True)
class GPTQQuantization(AffineQuantization):
    """GPTQ: the affine grid, each Linear layer's rounding error compensated through the inverse Hessian of its
    inputs on calibration windows from the training split; post-training only. Its result is cached by the
    sweep under the model's exact weights and masks, the method, bits, group size and data."""

    trainable: ClassVar[bool] = False
    act_order: bool = True  # visit input columns in decreasing order of their Hessian diagonal (static group scales)
    damping: float = check(lambda v: 0 < v < 1, "a number in (0, 1)", 0.01)  # added to H's diagonal, as a fraction of its mean
    calibration_windows: int = check(lambda v: v >= 1, "an integer >= 1", 128)  # training windows (examples) whose inputs give each layer's Hessian

    def rounding_key(self) -> dict[str, Any]:
        """One tensor alone rounds as affine does (the calibration fields decide the compensation only)."""
        out = {k: v for k, v in super().rounding_key().items() if k not in ("act_order", "damping", "calibration_windows")}
        return {**out, "method": AffineQuantization.method}

    @torch.no_grad()
    def quantize(self, model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor],
                 calibration: Calibration | None) -> Quantized:
        if calibration is None or not spec.integer:  # round to nearest on the same grid (an untrained model's size)
            return super().quantize(model, spec, masks, calibration)

        def build() -> Quantized:
            batches = list(calibration.inputs(self.calibration_windows).split(32))
            return gptq_quantize_(copy.deepcopy(model), spec, batches, masks, act_order=self.act_order, damping=self.damping)

        config = {k: v for k, v in dataclasses.asdict(self).items() if k not in ALLOCATION_FIELDS}
        key = (GPTQ_FORMAT, tensors_digest(model.state_dict()), tensors_digest(masks), config, spec.bits,
               spec.group_size, *([list(spec.widths)] if spec.widths else []))
        quantized = calibration.cached(key, build)
        weights = quantizable_weights(model, embeddings=self.embeddings)
        for name, qt in quantized.items():
            weights[name].copy_(qt.dequantize(masks.get(name)))
        for name in spec.float16_names():  # a mixed model's float16 tensors
            weights[name].copy_(weights[name].half().float())
        return quantized


__all__ = ["GPTQ_FORMAT", "GPTQQuantization", "gptq_quantize_", "gptq_tensor"]
