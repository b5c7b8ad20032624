"""Trained weight sharing (Han et al., Deep Compression, 2016): b-bit indices into a codebook of 2^b values.

`fit_codebook` clusters the weights of each tensor, output row or group (`granularity`) with 1-D k-means
(Lloyd's iterations from centroids spaced evenly between the group's min and max, which the paper found
best for keeping the large weights). Only the weights a pruning mask keeps are clustered; pruned ones
stay zero through the mask. Centroids are stored as float16 and the model runs on exactly those values.

Training the codebook (`recovery_steps`): `SharedWeights` makes each weight the centroid it is assigned
to, so distillation's gradients reach the centroids (summed over the weights sharing each), while the
assignments stay fixed. `refit_centroids` reads the trained centroids back from the trained weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from orchestrator.techniques.base import TrainingHook, check, register_technique
from orchestrator.techniques.quantize import (
    BlobLoad,
    BlobStore,
    EncodedTensor,
    Quantized,
    QuantizeMethod,
    QuantSpec,
    grouped,
    layout,
    load_indices,
    register_encoding,
    store_indices,
    ungrouped,
)


@register_encoding
@dataclass(frozen=True)
class CodebookTensor(EncodedTensor):
    """Weight sharing: each weight is one of its group's 2^b centroids, stored as b-bit indices packed densely
    and the float16 centroids of each tensor, row or group."""

    encoding = "codebook"
    q: torch.Tensor  # (rows, cols) uint8 centroid index in [0, 2^b − 1]
    centroids: torch.Tensor  # (R, G, 2^b) float32 values, each exactly a float16
    bits: int
    granularity: str  # tensor | channel | group: which weights share a codebook
    group_size: int  # columns per group (granularity group)

    def dequantize(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """w' = centroids[q], zero where `mask` is False."""
        idx = grouped(self.q.long(), self.granularity, self.group_size)  # (R, G, g)
        w = ungrouped(torch.gather(self.centroids, -1, idx), self.q.shape)
        return w if mask is None else torch.where(mask, w, torch.zeros_like(w))

    def encode(self, store: BlobStore, kept: Any) -> dict[str, Any]:
        return {"encoding": self.encoding, "bits": self.bits, "granularity": self.granularity, "group_size": self.group_size,
                "values": store_indices(store, self.q, kept, self.bits),
                "centroids": store.add(self.centroids.numpy().astype("<f2").tobytes(), floats=True),
                "centroid_shape": list(self.centroids.shape)}

    @classmethod
    def decode(cls, entry: Mapping[str, Any], load: BlobLoad, mask: torch.Tensor | None) -> "CodebookTensor":
        centroids = np.frombuffer(load.blob(entry["centroids"]), dtype="<f2").astype(np.float32)
        return cls(q=load_indices(entry, load, mask), centroids=torch.from_numpy(centroids).view(entry["centroid_shape"]),
                   bits=entry["bits"], granularity=entry["granularity"], group_size=entry["group_size"])


def _nearest(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """(R, G, g) index of each value's nearest centroid among sorted (R, G, K) ones."""
    mid = (centroids[..., 1:] + centroids[..., :-1]) / 2
    return torch.searchsorted(mid.contiguous(), values.contiguous())


@torch.no_grad()
def fit_codebook(w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> CodebookTensor:
    """k-means codebooks of 2^bits centroids for a 2-D weight (see the module docstring)."""
    method = spec.method
    w = w.detach().float()
    K = 2**spec.bits
    values = grouped(w, method.granularity, spec.group_size)  # (R, G, g)
    keep = grouped(mask.bool(), method.granularity, spec.group_size) if mask is not None else torch.ones_like(values, dtype=torch.bool)
    big = torch.finfo(torch.float32).max
    lo = torch.where(keep, values, torch.full_like(values, big)).amin(-1)
    hi = torch.where(keep, values, torch.full_like(values, -big)).amax(-1)
    empty = ~keep.any(-1)
    lo, hi = torch.where(empty, 0.0, lo), torch.where(empty, 0.0, hi)
    steps = torch.linspace(0, 1, K)
    centroids = lo[..., None] + (hi - lo)[..., None] * steps  # (R, G, K)
    weight = keep.float()
    for _ in range(method.iterations):
        idx = _nearest(values, centroids)
        sums = torch.zeros_like(centroids).scatter_add_(-1, idx, values * weight)
        counts = torch.zeros_like(centroids).scatter_add_(-1, idx, weight)
        updated = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated.sort(-1).values
    centroids = centroids.half().float().sort(-1).values  # stored as float16: run on exactly those values
    idx = _nearest(values, centroids)
    R, G, g = layout(w.shape, method.granularity, spec.group_size)
    return CodebookTensor(q=ungrouped(idx.to(torch.uint8), w.shape), centroids=centroids.contiguous(), bits=spec.bits,
                          granularity=method.granularity, group_size=g)


def flat_index(ct: CodebookTensor) -> torch.Tensor:
    """(rows, cols) position of each weight's centroid in `ct.centroids.reshape(-1)`."""
    R, G, K = ct.centroids.shape
    idx = grouped(ct.q.long(), ct.granularity, ct.group_size)  # (R, G, g)
    base = (torch.arange(R)[:, None] * G + torch.arange(G)[None, :]) * K  # (R, G)
    return ungrouped(idx + base[..., None], ct.q.shape)


class SharedWeights(nn.Module):
    """A parametrization: the weight is `centroids[index]` (zero where `keep` is False); only the centroids
    train. The latent weight enters with a zero factor so that DDP sees every parameter used."""

    def __init__(self, centroids: torch.Tensor, index: torch.Tensor, keep: torch.Tensor | None = None) -> None:
        super().__init__()
        self.centroids = nn.Parameter(centroids.reshape(-1).clone())
        self.register_buffer("index", index.long())
        self.register_buffer("keep", keep.float() if keep is not None else None)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shared = self.centroids[self.index]
        if self.keep is not None:
            shared = shared * self.keep
        return shared + 0.0 * w


def share_weights(model: nn.Module, codebook: Mapping[str, Mapping[str, torch.Tensor]], masks: Mapping[str, torch.Tensor]) -> None:
    """Make each weight named in `codebook` ({"centroids", "index"}, as `codebook_state` gives) the centroid
    it is assigned to, for training (a `SharedWeights` parametrization)."""
    modules = dict(model.named_modules())
    owners: dict[int, int] = {}
    for m in modules.values():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    for name, book in codebook.items():
        module = modules[name.rpartition(".")[0]]
        if owners[id(module.weight)] > 1:
            raise ValueError(f"codebook training cannot train {name}: it is tied to another layer's weight; "
                             "set the quantize method's `embeddings: false`")
        parametrize.register_parametrization(module, "weight", SharedWeights(book["centroids"], book["index"], masks.get(name)))


def unshare_weights(model: nn.Module) -> None:
    """Back to plain weights, each holding its trained centroid's value."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def codebook_state(quantized: Mapping[str, CodebookTensor]) -> dict[str, dict[str, torch.Tensor]]:
    """What `share_weights` takes, for a checkpoint."""
    return {name: {"centroids": ct.centroids, "index": flat_index(ct)} for name, ct in quantized.items()}


@torch.no_grad()
def refit_centroids(ct: CodebookTensor, w: torch.Tensor, mask: torch.Tensor | None = None) -> CodebookTensor:
    """The codebook with its centroids read from `w`, weights trained with `SharedWeights` (the assignments
    unchanged): each centroid is the mean of the kept weights assigned to it (all equal after training),
    rounded to float16; a centroid no kept weight uses keeps its value."""
    R, G, K = ct.centroids.shape
    index = flat_index(ct).reshape(-1)
    weight = (mask.reshape(-1).float() if mask is not None else torch.ones(index.numel()))
    sums = torch.zeros(R * G * K).scatter_add_(0, index, w.detach().float().reshape(-1) * weight)
    counts = torch.zeros(R * G * K).scatter_add_(0, index, weight)
    centroids = torch.where(counts > 0, sums / counts.clamp(min=1), ct.centroids.reshape(-1))
    return CodebookTensor(q=ct.q, centroids=centroids.half().float().reshape(R, G, K), bits=ct.bits,
                          granularity=ct.granularity, group_size=ct.group_size)


@register_technique("codebook")
@dataclass(frozen=True)
class CodebookQuantization(QuantizeMethod):
    """Trained weight sharing (Deep Compression): each tensor, row or group shares a k-means codebook of 2^b
    centroids; weights store b-bit indices. `recovery_steps` fine-tunes the centroids by distillation with
    the assignments fixed. Not with a tied LM head (set `embeddings: false`)."""

    trainable: ClassVar[bool] = False
    granularity: Literal["tensor", "channel", "group"] = "tensor"  # one codebook per tensor, per output row, or per `group_size` inputs of a row
    iterations: int = check(lambda v: v >= 1, "an integer >= 1", 25)  # k-means (Lloyd) iterations, from centroids spaced evenly over [min, max]

    def quantize_tensor(self, w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> CodebookTensor:
        if not 2 <= spec.bits <= 8:
            raise ValueError(f"bits must be in 2..8 for integer quantization, got {spec.bits}")
        return fit_codebook(w, spec, mask)

    def recovery(self, spec: QuantSpec, quantized: Quantized) -> tuple[TrainingHook, dict[str, Any]]:
        """The centroids train, the assignments stay: each weight is its centroid (`SharedWeights`)."""
        return SharedCentroids(), {"codebook": codebook_state(quantized)}  # type: ignore[arg-type]

    @torch.no_grad()
    def requantize(self, model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor], before: Quantized) -> Quantized:
        """The codebooks keep their assignments and take the trained centroids."""
        weights = dict(model.named_parameters())
        out: Quantized = {}
        for name, ct in before.items():
            out[name] = refit_centroids(ct, weights[name], masks.get(name))  # type: ignore[arg-type]
            weights[name].copy_(out[name].dequantize(masks.get(name)))
        return out


@dataclass
class SharedCentroids(TrainingHook):
    """Centroid training: every weight of the checkpoint's codebook is its centroid while the model trains,
    and holds its trained centroid's value afterwards."""

    def start(self, model: nn.Module, *, steps: int, init: Mapping[str, Any]) -> None:
        share_weights(model, init["codebook"], init.get("masks", {}))

    def finish(self, model: nn.Module) -> None:
        unshare_weights(model)


__all__ = ["CodebookQuantization", "CodebookTensor", "SharedCentroids", "SharedWeights", "codebook_state", "fit_codebook",
           "flat_index", "refit_centroids", "share_weights", "unshare_weights"]
