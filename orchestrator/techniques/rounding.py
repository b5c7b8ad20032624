"""Round-to-nearest on a uniform grid of 2^b levels: affine (`method: affine`, min-max) or symmetric
(`method: symmetric`), per tensor, output channel or group (docs/techniques.md).

Each group of weights gets a float scale s and an integer zero point z:

    q = clamp(round(w / s) + z, 0, 2^b − 1),   w' = (q − z) · s

- affine: s = (max − min) / (2^b − 1) over the group's range widened to include 0, z = round(−min / s),
  so 0.0 is a level and pruned weights stay exactly zero;
- symmetric: s = max|w| / (2^(b−1) − 1), z = 2^(b−1).

Scales are rounded to float16 where float16 holds them (the artifact then stores 16 bits per group, not
32), and the model runs on the rounded value. b bits give 2^b levels and 2^b − 1 steps. 16 bits means a
float16 copy; 32 leaves weights alone. The integer form is a `QuantizedTensor`, stored as b-bit levels
packed densely with a scale per group and, for affine, a b-bit zero point per group.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from orchestrator.core.bits import pack_bits, unpack_bits
from orchestrator.techniques.base import register_technique
from orchestrator.techniques.quantize import (
    BlobLoad,
    BlobStore,
    EncodedTensor,
    QuantizeMethod,
    QuantSpec,
    grouped,
    layout,
    load_indices,
    register_encoding,
    store_indices,
    ungrouped,
)


def storable(scale: torch.Tensor) -> torch.Tensor:
    """Each scale as the float16 the artifact stores, unless float16 cannot hold it (below 2^-24, above
    65504): then float32 stays."""
    half = scale.half().float()
    return torch.where((half > 0) & torch.isfinite(half), half, scale)


def affine_qparams(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale (R, G), zero point (R, G)) of groups (R, G, g): 2^b levels over each group's [min, max] widened to 0."""
    levels = 2**bits - 1
    lo = groups.amin(-1).clamp(max=0)
    hi = groups.amax(-1).clamp(min=0)
    scale = (hi - lo) / levels
    scale = storable(torch.where(scale > 0, scale, torch.ones_like(scale)))  # an all-zero group: any scale is exact
    zero_point = torch.round(-lo / scale).clamp(0, levels)
    return scale, zero_point


def symmetric_qparams(groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero point) of groups (R, G, g): levels −(2^(b−1)−1)..2^(b−1)−1 times max|w| / (2^(b−1)−1)."""
    half = 2 ** (bits - 1) - 1
    scale = groups.abs().amax(-1) / half
    scale = storable(torch.where(scale > 0, scale, torch.ones_like(scale)))
    return scale, torch.full_like(scale, 2 ** (bits - 1))


@register_encoding
@dataclass(frozen=True)
class QuantizedTensor(EncodedTensor):
    encoding = "quant"
    q: torch.Tensor  # (rows, cols) uint8 level index in [0, 2^b − 1]
    scale: torch.Tensor  # (R, G) float32 distance between levels; R is 1 (tensor) or rows
    zero_point: torch.Tensor  # (R, G) uint8: the level that is 0.0
    bits: int
    granularity: str  # tensor | channel | group
    group_size: int  # columns per group (granularity group)
    symmetric: bool

    def dequantize(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """w' = (q − z) · s, zero where `mask` is False."""
        q = grouped(self.q.float(), self.granularity, self.group_size)  # (R, G, g)
        w = ungrouped((q - self.zero_point.float()[..., None]) * self.scale[..., None], self.q.shape)
        return w if mask is None else torch.where(mask, w, torch.zeros_like(w))

    def zero_levels(self) -> torch.Tensor:
        """(rows, cols) uint8: each weight's zero point, the level a pruned weight holds."""
        R, G, g = layout(self.q.shape, self.granularity, self.group_size)
        return ungrouped(self.zero_point[..., None].expand(R, G, g), self.q.shape)

    @property
    def int8_eligible(self) -> bool:
        """torch's dynamic int8 Linear takes 8-bit symmetric weights with one scale per tensor or row."""
        return self.bits == 8 and self.symmetric and self.granularity in ("tensor", "channel")

    def encode(self, store: BlobStore, kept: Any) -> dict[str, Any]:
        scale_dtype = "<f2" if torch.equal(self.scale, self.scale.half().float()) else "<f4"
        entry = {
            "encoding": self.encoding, "bits": self.bits, "granularity": self.granularity, "group_size": self.group_size,
            "values": store_indices(store, self.q, kept, self.bits),
            "scale": store.add(self.scale.numpy().astype(scale_dtype).tobytes(), floats=True),
            "scale_shape": list(self.scale.shape), "scale_dtype": scale_dtype,
        }
        if self.symmetric:
            entry["zero_point"] = 2 ** (self.bits - 1)
        else:
            entry["zero_points"] = store.add(pack_bits(self.zero_point.numpy().reshape(-1), self.bits))
        return entry

    @classmethod
    def decode(cls, entry: Mapping[str, Any], load: BlobLoad, mask: torch.Tensor | None) -> "QuantizedTensor":
        bits = entry["bits"]
        q = load_indices(entry, load, mask)
        scale = torch.from_numpy(np.frombuffer(load.blob(entry["scale"]), dtype=entry.get("scale_dtype", "<f4")).astype(np.float32))
        scale = scale.view(entry["scale_shape"])
        if "zero_points" in entry:
            zp = torch.from_numpy(unpack_bits(load.blob(entry["zero_points"]), bits, scale.numel())).view(entry["scale_shape"])
        else:
            zp = torch.full(entry["scale_shape"], entry["zero_point"], dtype=torch.uint8)
        qt = cls(q=q, scale=scale, zero_point=zp, bits=bits, granularity=entry["granularity"],
                 group_size=entry["group_size"], symmetric="zero_points" not in entry)
        if mask is not None:  # a pruned weight's level is its zero point (what int8 kernels read)
            qt.q[~mask] = qt.zero_levels()[~mask]
        return qt


@dataclass(frozen=True)
class GridQuantization(QuantizeMethod):
    """A uniform grid of 2^b levels per group, each weight rounded to the nearest (`qparams` places the grid)."""

    @abc.abstractmethod
    def qparams(self, groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale (R, G), zero point (R, G)) of weight groups (R, G, g)."""

    @property
    def symmetric(self) -> bool:
        return False

    def quantize_tensor(self, w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> QuantizedTensor:
        if not 2 <= spec.bits <= 8:
            raise ValueError(f"bits must be in 2..8 for integer quantization, got {spec.bits}")
        w = w.detach().float()
        groups = grouped(w, self.granularity, spec.group_size)  # (R, G, g)
        scale, zero_point = self.qparams(groups, spec.bits)  # (R, G) each
        q = torch.round(groups / scale[..., None]) + zero_point[..., None]
        q = q.clamp_(0, 2**spec.bits - 1).to(torch.uint8)
        _, _, g = layout(w.shape, self.granularity, spec.group_size)
        return QuantizedTensor(q=ungrouped(q, w.shape), scale=scale.float(), zero_point=zero_point.to(torch.uint8),
                               bits=spec.bits, granularity=self.granularity, group_size=g, symmetric=self.symmetric)


@register_technique("affine")
@dataclass(frozen=True)
class AffineQuantization(GridQuantization):
    """Min-max affine: 2^b levels spanning each group's [min, max], zero exactly representable."""

    def qparams(self, groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        return affine_qparams(groups, bits)


@register_technique("symmetric")
@dataclass(frozen=True)
class SymmetricQuantization(GridQuantization):
    """Symmetric: levels −(2^(b−1)−1)..2^(b−1)−1 times max|w| / (2^(b−1)−1); zero point fixed."""

    @property
    def symmetric(self) -> bool:
        return True

    def qparams(self, groups: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        return symmetric_qparams(groups, bits)
