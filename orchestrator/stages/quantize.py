"""Min-max affine weight quantization per output channel (DESIGN.md).

    q = round((w − min) / (max − min) · (2^b − 1)),   w' = min + q · (max − min) / (2^b − 1)

b bits give 2^b levels and 2^b − 1 steps. 16 bits means a float16 copy; 32 leaves weights alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class QuantizedTensor:
    q: torch.Tensor  # (out, in) uint8 level index in [0, 2^b − 1]
    lo: torch.Tensor  # (out,) float32 row minimum: the level 0 value
    step: torch.Tensor  # (out,) float32 distance between levels; 0 for a constant row
    bits: int


def quantizable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The matrices quantization acts on: `nn.Linear` and `nn.Embedding` weights (biases, norms stay fp32)."""
    return {
        f"{name}.weight": m.weight for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))
    }


def quantize_minmax(w: torch.Tensor, bits: int) -> QuantizedTensor:
    """Quantize each row of a 2-D tensor to 2^bits levels spanning that row's [min, max]."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8 for integer quantization, got {bits}")
    w = w.detach().float()
    levels = 2**bits - 1
    lo = w.amin(dim=1)  # (out,)
    step = (w.amax(dim=1) - lo) / levels  # (out,)
    safe = torch.where(step > 0, step, torch.ones_like(step))
    q = torch.round((w - lo[:, None]) / safe[:, None]).clamp_(0, levels).to(torch.uint8)
    return QuantizedTensor(q=q, lo=lo, step=step, bits=bits)


def dequantize(qt: QuantizedTensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """w' = min + q · step, zero where `mask` is False. The loader calls this too, so reloads are bit-exact."""
    w = qt.lo[:, None] + qt.q.float() * qt.step[:, None]
    return w if mask is None else torch.where(mask, w, torch.zeros_like(w))


@torch.no_grad()
def quantize_(
    model: nn.Module, bits: int, masks: dict[str, torch.Tensor] | None = None
) -> dict[str, QuantizedTensor]:
    """Replace each quantizable weight by its quantized value in place (pruned entries stay 0).

    Returns the integer form of every weight (empty for 16 and 32 bits) for the exporter.
    """
    masks = masks or {}
    out: dict[str, QuantizedTensor] = {}
    for name, w in quantizable_weights(model).items():
        if bits == 32:
            continue
        if bits == 16:
            w.copy_(w.half().float())
            continue
        qt = quantize_minmax(w, bits)
        w.copy_(dequantize(qt, masks.get(name)))
        out[name] = qt
    return out
