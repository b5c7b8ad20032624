"""Real int8 execution on CPU: Linear layers whose weights are 8-bit symmetric per tensor or row run on
torch's dynamic int8 kernels (`kernel: auto`); every other format runs its dequantized float weights."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from orchestrator.techniques.quantize import EncodedTensor
from orchestrator.techniques.rounding import QuantizedTensor


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


def int8_layers(model: nn.Module, quantized: Mapping[str, EncodedTensor]) -> list[str]:
    """The Linear layers whose quantized weights torch's int8 kernels can run."""
    return [
        name for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and isinstance(quantized.get(f"{name}.weight"), QuantizedTensor)
        and quantized[f"{name}.weight"].int8_eligible  # type: ignore[union-attr]
    ]


def to_int8_kernels(model: nn.Module, quantized: Mapping[str, EncodedTensor], layers: list[str]) -> None:
    """Swap the named Linear layers for `Int8Linear`s built from their quantized weights, in place. Other
    layers keep running their dequantized float weights."""
    for name in layers:
        parent_name, _, child = name.rpartition(".")
        module = model.get_submodule(name)
        setattr(model.get_submodule(parent_name), child, Int8Linear(module, quantized[f"{name}.weight"]))  # type: ignore[arg-type]
