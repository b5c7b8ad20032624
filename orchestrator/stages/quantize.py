"""Weight quantization to 2^b levels: affine (min-max) or symmetric, per tensor, output channel or group.

Each group of weights gets a float scale s and an integer zero point z (DESIGN.md):

    q = clamp(round(w / s) + z, 0, 2^b − 1),   w' = (q − z) · s

- affine: s = (max − min) / (2^b − 1) over the group's range widened to include 0, z = round(−min / s),
  so 0.0 is a level and pruned weights stay exactly zero;
- symmetric: s = max|w| / (2^(b−1) − 1), z = 2^(b−1).

Scales are rounded to float16 where float16 holds them (the exporter then stores 16 bits per group, not
32), and the model runs on the rounded value. b bits give 2^b levels and 2^b − 1 steps. 16 bits means a
float16 copy; 32 leaves weights alone. A scheme is a config class (`config/techniques.py`) plus its registered `qparams` function here. Quantization-aware
training runs `fake_quantize`, the same quantizer with a straight-through gradient, during distillation.
8-bit symmetric per-tensor/channel Linear weights can run on torch's int8 CPU kernels (`to_int8_kernels`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from orchestrator.config import FLOAT_BITS
from orchestrator.config.techniques import AffineQuantization, CodebookQuantization, GPTQQuantization, QuantizeMethod, SymmetricQuantization

QParams = Callable[[torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
SCHEMES: dict[type[QuantizeMethod], QParams] = {}


def register_scheme(config_cls: type[QuantizeMethod]) -> Callable[[QParams], QParams]:
    """Register `fn(groups (R, G, g), bits) -> (scale (R, G), zero_point (R, G))` for a config class."""

    def register(fn: QParams) -> QParams:
        SCHEMES[config_cls] = fn
        return fn

    return register


def storable(scale: torch.Tensor) -> torch.Tensor:
    """Each scale as the float16 the artifact stores, unless float16 cannot hold it (below 2^-24, above
    65504): then float32 stays."""
    half = scale.half().float()
    return torch.where((half > 0) & torch.isfinite(half), half, scale)


@register_scheme(GPTQQuantization)  # GPTQ rounds onto the affine grid (`gptq.py` chooses the levels)
@register_scheme(AffineQuantization)
def affine_qparams(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    levels = 2**bits - 1
    lo = groups.amin(-1).clamp(max=0)
    hi = groups.amax(-1).clamp(min=0)
    scale = (hi - lo) / levels
    scale = storable(torch.where(scale > 0, scale, torch.ones_like(scale)))  # an all-zero group: any scale is exact
    zero_point = torch.round(-lo / scale).clamp(0, levels)
    return scale, zero_point


@register_scheme(SymmetricQuantization)
def symmetric_qparams(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    half = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1) / half
    scale = storable(torch.where(scale > 0, scale, torch.ones_like(scale)))
    return scale, torch.full_like(scale, 2 ** (bits - 1))


@dataclass(frozen=True)
class QuantSpec:
    """What one trial quantizes with: the scheme's config plus the searched `bits` and `group_size`."""

    method: QuantizeMethod
    bits: int  # 2..8 integer levels, or one of FLOAT_BITS (16: a float16 copy; 32: left alone)
    group_size: int  # inputs per group (granularity group only)

    @property
    def integer(self) -> bool:
        return self.bits not in FLOAT_BITS

    @property
    def float16(self) -> bool:
        return FLOAT_BITS.get(self.bits) == "float16"


@dataclass(frozen=True)
class QuantizedTensor:
    q: torch.Tensor  # (rows, cols) uint8 level index in [0, 2^b − 1]
    scale: torch.Tensor  # (R, G) float32 distance between levels; R is 1 (tensor) or rows
    zero_point: torch.Tensor  # (R, G) uint8: the level that is 0.0
    bits: int
    granularity: str  # tensor | channel | group
    group_size: int  # columns per group (granularity group)
    symmetric: bool


@dataclass(frozen=True)
class CodebookTensor:
    """Weight sharing: each weight is one of its group's 2^b centroids (`codebook.py`)."""

    q: torch.Tensor  # (rows, cols) uint8 centroid index in [0, 2^b − 1]
    centroids: torch.Tensor  # (R, G, 2^b) float32 values, each exactly a float16
    bits: int
    granularity: str  # tensor | channel | group: which weights share a codebook
    group_size: int  # columns per group (granularity group)


def _layout(shape: torch.Size, granularity: str, group_size: int) -> tuple[int, int, int]:
    """(R, G, g): how a (rows, cols) tensor, its columns padded to G·g, splits into groups."""
    rows, cols = shape
    if granularity == "tensor":
        return 1, 1, rows * cols
    if granularity == "channel":
        return rows, 1, cols
    g = min(group_size, cols)
    return rows, -(-cols // g), g


def _grouped(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """(R, G, g) view of `w`; a ragged last group is padded with copies of its row's last column, which
    changes no group's min, max or max|w|."""
    R, G, g = _layout(w.shape, granularity, group_size)
    pad = G * g - w.shape[1] if granularity == "group" else 0
    if pad:
        w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    return w.reshape(R, G, g)


def _ungrouped(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    rows, cols = shape
    return t.reshape(rows, -1)[:, :cols] if t.numel() != rows * cols else t.reshape(shape)


def quantize_tensor(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> QuantizedTensor | CodebookTensor:
    """Quantize a 2-D weight with `spec`'s scheme, bits and granularity (a codebook is fitted to the weights
    `mask` keeps)."""
    if not 2 <= spec.bits <= 8:
        raise ValueError(f"bits must be in 2..8 for integer quantization, got {spec.bits}")
    method = spec.method
    if isinstance(method, CodebookQuantization):
        from orchestrator.stages.codebook import fit_codebook

        return fit_codebook(w, spec, mask)
    w = w.detach().float()
    groups = _grouped(w, method.granularity, spec.group_size)  # (R, G, g)
    scale, zero_point = SCHEMES[type(method)](groups, spec.bits)  # (R, G) each
    q = torch.round(groups / scale[..., None]) + zero_point[..., None]
    q = q.clamp_(0, 2**spec.bits - 1).to(torch.uint8)
    R, G, g = _layout(w.shape, method.granularity, spec.group_size)
    return QuantizedTensor(
        q=_ungrouped(q, w.shape), scale=scale.float(), zero_point=zero_point.to(torch.uint8), bits=spec.bits,
        granularity=method.granularity, group_size=g, symmetric=isinstance(method, SymmetricQuantization),
    )


def dequantize(qt: QuantizedTensor | CodebookTensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """w' = (q − z) · s (a codebook: w' = centroids[q]), zero where `mask` is False. The loader calls this
    too, so reloads are bit-exact."""
    if isinstance(qt, CodebookTensor):
        idx = _grouped(qt.q.long(), qt.granularity, qt.group_size)  # (R, G, g)
        w = _ungrouped(torch.gather(qt.centroids, -1, idx), qt.q.shape)
        return w if mask is None else torch.where(mask, w, torch.zeros_like(w))
    q = _grouped(qt.q.float(), qt.granularity, qt.group_size)  # (R, G, g)
    w = _ungrouped((q - qt.zero_point.float()[..., None]) * qt.scale[..., None], qt.q.shape)
    return w if mask is None else torch.where(mask, w, torch.zeros_like(w))


def zero_levels(qt: QuantizedTensor) -> torch.Tensor:
    """(rows, cols) uint8: each weight's zero point, the level a pruned weight holds."""
    R, G, g = _layout(qt.q.shape, qt.granularity, qt.group_size)
    return _ungrouped(qt.zero_point[..., None].expand(R, G, g), qt.q.shape)


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator)."""
    with torch.no_grad():
        wq = dequantize(quantize_tensor(w, spec))
    return w + (wq - w).detach()


def quantizable_weights(model: nn.Module, *, embeddings: bool = True) -> dict[str, nn.Parameter]:
    """The matrices quantization acts on: `nn.Linear` and (optionally) `nn.Embedding` weights, each tensor
    once (fake-quantized ones are left to QAT); biases and norms stay float32."""
    kinds = (nn.Linear, nn.Embedding) if embeddings else (nn.Linear,)
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()  # a tied LM head and token embedding are one tensor: quantized once
    if not embeddings:  # ... or, when embeddings stay float, not at all
        seen = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    for name, m in model.named_modules():
        if isinstance(m, kinds) and not parametrize.is_parametrized(m, "weight") and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out[f"{name}.weight"] = m.weight
    return out


@torch.no_grad()
def quantize_(model: nn.Module, spec: QuantSpec, masks: dict[str, torch.Tensor] | None = None) -> dict[str, QuantizedTensor | CodebookTensor]:
    """Replace each quantizable weight by its quantized value in place (pruned entries stay 0).

    Returns the integer form of every weight (empty for 16 and 32 bits) for the exporter.
    """
    masks = masks or {}
    out: dict[str, QuantizedTensor] = {}
    if FLOAT_BITS.get(spec.bits) == "float32":
        return out
    for name, w in quantizable_weights(model, embeddings=spec.method.embeddings).items():
        if spec.float16:
            w.copy_(w.half().float())
            continue
        qt = quantize_tensor(w, spec, masks.get(name))
        w.copy_(dequantize(qt, masks.get(name)))
        out[name] = qt
    return out


class FakeQuant(nn.Module):
    """A parametrization: while `active`, the weight the forward pass sees is its fake-quantized value."""

    def __init__(self, spec: QuantSpec, active: bool = True) -> None:
        super().__init__()
        self.spec, self.active = spec, active

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.spec) if self.active else w


def add_fake_quant(model: nn.Module, spec: QuantSpec, *, active: bool = True) -> list[FakeQuant]:
    """Quantization-aware training: every quantizable weight is fake-quantized in the forward pass once its
    parametrization is `active`. Registered before training starts (DDP must see the module structure it
    will run), switched on later by setting `active`."""
    out = []
    for name, module in model.named_modules():
        kinds = (nn.Linear, nn.Embedding) if spec.method.embeddings else (nn.Linear,)
        if isinstance(module, kinds):
            out.append(FakeQuant(spec, active))
            parametrize.register_parametrization(module, "weight", out[-1])
    return out


def remove_fake_quant(model: nn.Module) -> None:
    """Back to plain float weights (the latent ones QAT trained); PTQ with the same spec then yields the
    exact weights the last forward passes saw."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


# ----------------------------------------------------------------------------------------------
# Real int8 execution on CPU


def int8_kernel_eligible(qt: QuantizedTensor) -> bool:
    """torch's dynamic int8 Linear takes 8-bit symmetric weights with one scale per tensor or row."""
    return isinstance(qt, QuantizedTensor) and qt.bits == 8 and qt.symmetric and qt.granularity in ("tensor", "channel")


class Int8Linear(nn.Module):
    """A Linear layer on torch's int8 CPU kernels (dynamic quantization: activations are quantized per
    batch, weights are the stored 8-bit levels). Built from a `QuantizedTensor`, so a reloaded artifact
    gives the same module and the same outputs."""

    def __init__(self, linear: nn.Linear, qt: QuantizedTensor) -> None:
        super().__init__()
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        rows = qt.q.shape[0]
        levels = (qt.q.to(torch.int16) - 128).to(torch.int8)  # symmetric 8-bit: z = 128
        scale = qt.scale.reshape(-1).double().expand(rows).contiguous()
        with warnings.catch_warnings():  # torch deprecates quantized tensors in favour of torchao (no CPU int8 there)
            warnings.simplefilter("ignore")
            weight = torch._make_per_channel_quantized_tensor(levels, scale, torch.zeros(rows, dtype=torch.long), 0)
            self.inner = DynamicLinear(linear.in_features, linear.out_features, dtype=torch.qint8)
            bias = None if linear.bias is None else linear.bias.detach().float().clone()
            self.inner.set_weight_bias(weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def int8_layers(model: nn.Module, quantized: dict[str, QuantizedTensor]) -> list[str]:
    """The Linear layers whose quantized weights torch's int8 kernels can run."""
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and f"{name}.weight" in quantized and int8_kernel_eligible(quantized[f"{name}.weight"])
    ]


def to_int8_kernels(model: nn.Module, quantized: dict[str, QuantizedTensor], layers: list[str]) -> None:
    """Swap the named Linear layers for `Int8Linear`s built from their quantized weights, in place. Other
    layers keep running their dequantized float weights."""
    for name in layers:
        parent_name, _, child = name.rpartition(".")
        module = model.get_submodule(name)
        setattr(model.get_submodule(parent_name), child, Int8Linear(module, quantized[f"{name}.weight"]))
