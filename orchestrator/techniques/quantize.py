"""The quantize stage's side of the plugin contract: what a quantize method is (`QuantizeMethod`), the integer
form it gives a weight (`EncodedTensor`, stored by the artifact through its registered encoding), how a
weight splits into groups by granularity, and quantization-aware training (`QAT`), which every method that
can round a single tensor gets for free.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from orchestrator.core.bits import pack_bits
from orchestrator.core.errors import ConfigError
from orchestrator.techniques.base import FLOAT_BITS, Technique, TrainingHook, check
from orchestrator.techniques.weights import quantizable_weights

CANDIDATE_BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)  # widths an allocation may give a tensor
ALLOCATION_FIELDS = ("allocation", "candidate_bits", "sensitivity", "sensitivity_windows")  # a quantize config's allocation settings

ENCODINGS: dict[str, type["EncodedTensor"]] = {}  # an artifact entry's `encoding` -> the class that decodes it


def register_encoding(cls: type["EncodedTensor"]) -> type["EncodedTensor"]:
    """Class decorator: artifact entries of `cls.encoding` are read back by `cls.decode`."""
    ENCODINGS[cls.encoding] = cls
    return cls


class BlobStore(Protocol):
    """Where an encoder puts its blobs (the artifact being written: `io.artifact`)."""

    def add(self, data: bytes, *alternatives: tuple[str, bytes], floats: bool = False) -> list[Any]:
        """Store `data` (entropy-coded: whichever of it and its `alternatives`, (layout, bytes) other forms of
        it, codes smallest); `floats`: it holds float values. Returns the blob's reference for the manifest."""


class BlobLoad(Protocol):
    """Where a decoder reads its blobs back from."""

    def blob(self, ref: list[Any]) -> bytes: ...

    def levels(self, ref: list[Any], bits: int, count: int) -> np.ndarray:
        """`count` indices of `bits` bits each, in whichever layout `BlobStore.add` chose."""


class EncodedTensor(abc.ABC):
    """A weight in a technique's integer form: how the model runs it (`dequantize`) and how the artifact
    stores it (`encode` / `decode`). Subclasses are dataclasses of tensors and numbers."""

    encoding: ClassVar[str]  # the artifact entry's `encoding`
    q: torch.Tensor  # (rows, cols) uint8 index of each weight (a level, a centroid, a sign)

    @abc.abstractmethod
    def dequantize(self, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The float weight the model runs, zero where `mask` is False. The loader calls this too, so reloads
        are bit-exact."""

    @abc.abstractmethod
    def encode(self, store: BlobStore, kept: Any) -> dict[str, Any]:
        """The manifest fields of this weight, its blobs added to `store`; `kept` selects the flat positions a
        pruning mask keeps (a slice of everything when there is no mask)."""

    @classmethod
    @abc.abstractmethod
    def decode(cls, entry: Mapping[str, Any], load: BlobLoad, mask: torch.Tensor | None) -> "EncodedTensor":
        """Read back what `encode` wrote (`entry["shape"]` is the weight's shape; pruned positions are absent)."""

    def fields(self) -> dict[str, Any]:
        """Its state, as `type(self)(**fields)` takes it (what a cache stores)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


Quantized = dict[str, EncodedTensor]  # parameter name -> its integer form


def store_indices(store: BlobStore, q: torch.Tensor, kept: Any, bits: int) -> list[Any]:
    """The `bits`-bit indices (levels, centroids) of the weights `kept` selects, packed densely, or one byte each
    where that codes smaller; the blob's reference."""
    values = q.numpy().reshape(-1)[kept]
    return store.add(pack_bits(values, bits), ("bytes", values.astype(np.uint8).tobytes()))


def load_indices(entry: Mapping[str, Any], load: BlobLoad, mask: torch.Tensor | None) -> torch.Tensor:
    """What `store_indices` stored as `entry["values"]`, back in the weight's shape (uint8; 0 where pruned)."""
    shape = entry["shape"]
    numel = int(np.prod(shape, dtype=np.int64))
    q = np.zeros(numel, dtype=np.uint8)
    q[mask.numpy().reshape(-1) if mask is not None else slice(None)] = load.levels(
        entry["values"], entry["bits"], numel if mask is None else int(mask.sum()))
    return torch.from_numpy(q).view(shape)


def save_quantized(quantized: Quantized, path: Any) -> None:
    torch.save({name: {"encoding": t.encoding, **t.fields()} for name, t in quantized.items()}, path)


def load_quantized(path: Any) -> Quantized:
    blob = torch.load(path, weights_only=True)
    return {name: ENCODINGS[fields.pop("encoding")](**fields) for name, fields in blob.items()}


# ----------------------------------------------------------------------------------------------
# Groups: how a (rows, cols) weight splits by granularity


def layout(shape: torch.Size, granularity: str, group_size: int) -> tuple[int, int, int]:
    """(R, G, g): how a (rows, cols) tensor, its columns padded to G·g, splits into groups."""
    rows, cols = shape
    if granularity == "tensor":
        return 1, 1, rows * cols
    if granularity == "channel":
        return rows, 1, cols
    g = min(group_size, cols)
    return rows, -(-cols // g), g


def grouped(w: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    """(R, G, g) view of `w`; a ragged last group is padded with copies of its row's last column, which
    changes no group's min, max or max|w|."""
    R, G, g = layout(w.shape, granularity, group_size)
    pad = G * g - w.shape[1] if granularity == "group" else 0
    if pad:
        w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    return w.reshape(R, G, g)


def ungrouped(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    rows, cols = shape
    return t.reshape(rows, -1)[:, :cols] if t.numel() != rows * cols else t.reshape(shape)


# ----------------------------------------------------------------------------------------------
# The method


@dataclass(frozen=True)
class QuantSpec:
    """What one trial quantizes with: the method's config plus the searched `bits` and `group_size`, or, with
    `allocation: sensitivity`, a budget of `effective_bits` that `techniques.allocation` turns into a width per
    tensor (`widths`)."""

    method: "QuantizeMethod"
    bits: int  # 2..8 integer levels, or one of FLOAT_BITS (16: a float16 copy; 32: left alone); mixed: a tensor not in `widths`
    group_size: int  # inputs per group (granularity group only)
    widths: tuple[tuple[str, int], ...] = ()  # mixed precision: (tensor name, its width), every quantizable tensor listed
    budget: float | None = None  # `allocation: sensitivity`: bits per weight of the quantizable tensors, scales included

    def width(self, name: str) -> int:
        """The width tensor `name` is quantized to."""
        return dict(self.widths).get(name, self.bits)

    def at(self, name: str) -> "QuantSpec":
        """The uniform spec of one tensor (its own width)."""
        return dataclasses.replace(self, bits=self.width(name), widths=(), budget=None)

    @property
    def allocated(self) -> bool:
        """Its widths are known: uniform, or mixed and allocated."""
        return self.budget is None or bool(self.widths)

    @property
    def integer(self) -> bool:
        """Some tensor gets integer levels."""
        return any(b not in FLOAT_BITS for _, b in self.widths) if self.widths else self.bits not in FLOAT_BITS

    @property
    def float16(self) -> bool:
        """Uniform 16 bits: every float matrix is stored as float16."""
        return not self.widths and FLOAT_BITS.get(self.bits) == "float16"

    def float16_names(self) -> set[str]:
        """Mixed: the tensors kept as float16 copies."""
        return {name for name, b in self.widths if FLOAT_BITS.get(b) == "float16"}


@dataclass(frozen=True)
class Calibration:
    """What a quantize method that calibrates on data (GPTQ), and a sensitivity estimate, may use, given by the
    sweep: model inputs from the training split, and caches of their results keyed by everything that
    determines them."""

    inputs: Callable[[int], torch.Tensor]  # n -> (n, ...) training examples, drawn with the sweep's seed
    cached: Callable[[tuple[Any, ...], Callable[[], Quantized]], Quantized]  # (key parts, build) -> the result, built once
    tables: Callable[[tuple[Any, ...], Callable[[], dict[str, np.ndarray]]], dict[str, np.ndarray]] | None = None  # the same for arrays (sensitivities)


@dataclass(frozen=True)
class QuantizeMethod(Technique):
    stage: ClassVar[str] = "quantize"
    trainable: ClassVar[bool] = True  # it can run as quantization-aware training (`mode: qat`)
    granularity: Literal["tensor", "channel", "group"] = "channel"  # one scale per tensor, per output row, or per `group_size` inputs of a row
    mode: Literal["ptq", "qat"] = "ptq"  # qat: fake quantization (straight-through) during distillation, then the same quantizer after it
    qat_start: float = check(lambda v: 0 <= v < 1, "a number in [0, 1)", 0.5)  # qat: fraction of the steps trained in float before fake quantization starts
    kernel: Literal["auto", "dequantized"] = "auto"  # auto: 8-bit symmetric per-tensor/channel Linear layers run torch's int8 kernels; dequantized: float always
    embeddings: bool = True  # also quantize the token and position tables
    recovery_steps: int = check(lambda v: v >= 0, "an integer >= 0", 0)  # distillation steps after quantizing (from the teacher's outputs; without `distill`, the teacher fine-tunes its own compressed copy): QAT from the quantized weights (codebook: the centroids, assignments fixed)
    allocation: Literal["uniform", "sensitivity"] = "uniform"  # uniform: every quantizable tensor at `params.bits`; sensitivity: each tensor a width of `candidate_bits`, the summed sensitivity least within `params.effective_bits`
    candidate_bits: tuple[int, ...] = check(lambda v: len(v) >= 2 and len(set(v)) == len(v) and all(b in CANDIDATE_BITS for b in v),
                                            f"a list of at least two distinct widths among {', '.join(map(str, CANDIDATE_BITS))}", (2, 3, 4, 8, 16))  # allocation sensitivity: the widths a tensor may get
    sensitivity: Literal["fisher", "kl", "mse"] = "fisher"  # allocation sensitivity: how a tensor's loss at a width is estimated (techniques/allocation.py): fisher: the output distribution's Fisher information times the rounding error (one backward pass per window); kl: measured KL divergence of the outputs with that tensor rounded (a forward pass per tensor and width); mse: the rounding error alone (no data)
    sensitivity_windows: int = check(lambda v: v >= 1, "an integer >= 1", 16)  # allocation sensitivity: training windows (examples) the estimate is computed on

    @property
    def uses(self) -> tuple[str, ...]:  # type: ignore[override]
        """`bits` and `group_size`; with `allocation: sensitivity`, `effective_bits` in place of `bits`."""
        return ("effective_bits", "group_size") if self.allocation == "sensitivity" else ("bits", "group_size")

    def why_unused(self, param: str) -> str:
        if param == "bits":
            return " with `allocation: sensitivity` (each tensor's width comes from `candidate_bits` under `params.effective_bits`)"
        if param == "effective_bits":
            return " with `allocation: uniform` (set `allocation: sensitivity` to allocate widths under a budget)"
        return ""

    def spec(self, params: Mapping[str, Any]) -> QuantSpec | None:
        """The trial's quantizer, from its `bits` (or, allocated, `effective_bits`) and `group_size`; None when
        every weight keeps float32."""
        if self.allocation == "sensitivity":
            return QuantSpec(self, 32, int(params["group_size"]), budget=float(params["effective_bits"]))
        bits = int(params["bits"])
        return None if FLOAT_BITS.get(bits) == "float32" else QuantSpec(self, bits, int(params["group_size"]))

    def rounding_key(self) -> dict[str, Any]:
        """The config that decides how `quantize_tensor` rounds one tensor (what a sensitivity estimate depends on),
        without what only decides how a model is trained, calibrated or allocated."""
        out = {"method": self.method, **dataclasses.asdict(self)}
        for name in ("mode", "qat_start", "kernel", "recovery_steps", *ALLOCATION_FIELDS):
            out.pop(name, None)
        return out

    def quantize_tensor(self, w: torch.Tensor, spec: QuantSpec, mask: torch.Tensor | None = None) -> EncodedTensor:
        """One 2-D weight in integer form (a method that rounds tensor by tensor implements this)."""
        raise NotImplementedError(f"quantize method {self.method} quantizes whole models only")

    @torch.no_grad()
    def quantize(self, model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor],
                 calibration: Calibration | None) -> Quantized:
        """Every quantizable weight in integer form at its width (`spec.width`), each replaced in place by what it
        dequantizes to (pruned entries stay 0; 16 bits: a float16 copy, nothing in integer form). Without `calibration` (an untrained
        model measured before training) a method that calibrates rounds to the nearest level of its grid."""
        if not spec.allocated:
            raise ValueError("a spec with a budget is allocated first (techniques.allocation.allocate_widths)")
        out: Quantized = {}
        for name, w in quantizable_weights(model, embeddings=self.embeddings).items():
            kind = FLOAT_BITS.get(spec.width(name))
            if kind == "float32":  # left alone
                continue
            if kind == "float16":
                w.copy_(w.half().float())
                continue
            qt = self.quantize_tensor(w, spec.at(name), masks.get(name))
            w.copy_(qt.dequantize(masks.get(name)))
            out[name] = qt
        return out

    @property
    def during_distillation(self) -> bool:
        return self.mode == "qat"

    @property
    def trains_as(self) -> str:
        return "quantize mode qat"

    def distill_hook(self, params: Mapping[str, Any]) -> TrainingHook | None:
        spec = self.spec(params)
        return QAT(spec) if self.mode == "qat" and spec is not None and spec.integer else None

    def recovery(self, spec: QuantSpec, quantized: Quantized) -> tuple[TrainingHook, dict[str, Any]]:
        """How `recovery_steps` fine-tune the quantized model: the hook, and what the checkpoint training starts
        from carries for it. By default QAT from step 0 on the same grid."""
        return QAT(dataclasses.replace(spec, method=dataclasses.replace(self, qat_start=0.0))), {}

    def requantize(self, model: nn.Module, spec: QuantSpec, masks: Mapping[str, torch.Tensor], before: Quantized) -> Quantized:
        """The fine-tuned model on the grid again: by default its latent weights rounded to the nearest level
        (the quantizer QAT trained against; a method that calibrates does not calibrate again)."""
        return QuantizeMethod.quantize(self, model, spec, masks, None)

    def check(self, *, source: str, given: Set[str], distill: bool) -> None:
        super().check(source=source, given=given, distill=distill)
        if self.mode == "qat" and not self.trainable:
            raise ConfigError(f"{source}: quantize method {self.method} is applied after training, not during it: set "
                              "`mode: ptq` (and `recovery_steps: N` to fine-tune the quantized model)")
        if self.mode == "qat" and self.recovery_steps:
            raise ConfigError(f"{source}: quantize `mode: qat` already trains the quantized weights; set `recovery_steps` to 0 "
                              "or use `mode: ptq`")
        if self.allocation == "sensitivity" and "effective_bits" not in given:
            raise ConfigError(f"{source}: quantize `allocation: sensitivity` allocates widths under a budget; search "
                              "`params.effective_bits` (e.g. {low: 2.5, high: 6}) or set `allocation: uniform`")
        if self.allocation == "sensitivity" and self.mode == "qat":
            raise ConfigError(f"{source}: quantize `allocation: sensitivity` allocates widths on the trained model, so it cannot "
                              "train with them (`mode: qat`); use `mode: ptq` (with `recovery_steps: N` to fine-tune the allocated model)")
        if "group_size" in given and self.granularity != "group":
            raise ConfigError(f"{source}: `params.group_size` applies to quantize granularity group only; set it there or "
                              "remove the param")

    def describe(self, params: Mapping[str, Any]) -> str:
        bits = params.get("bits")
        if self.allocation == "uniform" and bits is not None and int(bits) >= 32:
            return "Keep float32 weights (bits 32)."
        grain = f"in groups of {params.get('group_size')}" if self.granularity == "group" else f"per {self.granularity}"
        extra = ", trained with fake quantization (QAT)" if self.mode == "qat" else ""
        extra += f", then {self.recovery_steps} recovery steps" if self.recovery_steps else ""
        if self.allocation == "sensitivity":
            widths = "/".join(map(str, sorted(self.candidate_bits)))
            return (f"Quantize to {params.get('effective_bits')} bits per weight, each tensor {widths} bits by {self.sensitivity} "
                    f"sensitivity: {self.method}, {grain}{extra}.")
        return f"Quantize to {bits} bits: {self.method}, {grain}{extra}."


# ----------------------------------------------------------------------------------------------
# Quantization-aware training


def fake_quantize(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Quantize-dequantize in the forward pass, identity gradient (straight-through estimator)."""
    with torch.no_grad():
        wq = spec.method.quantize_tensor(w, spec).dequantize()
    return w + (wq - w).detach()


class FakeQuant(nn.Module):
    """A parametrization: while `active`, the weight the forward pass sees is its fake-quantized value."""

    def __init__(self, spec: QuantSpec, active: bool = True) -> None:
        super().__init__()
        self.spec, self.active = spec, active

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.spec) if self.active else w


def add_fake_quant(model: nn.Module, spec: QuantSpec, *, active: bool = True) -> list[FakeQuant]:
    """Every quantizable weight fake-quantized in the forward pass once its parametrization is `active`.
    Registered before training starts (DDP must see the module structure it will run), switched on later."""
    out = []
    kinds = (nn.Linear, nn.Embedding) if spec.method.embeddings else (nn.Linear,)
    names = {id(w): name for name, w in quantizable_weights(model, embeddings=spec.method.embeddings).items()}
    for module in model.modules():
        if isinstance(module, kinds) and id(module.weight) in names:
            one = spec.at(names[id(module.weight)])
            if one.bits in FLOAT_BITS:  # a mixed model's float tensor: not on a grid
                continue
            out.append(FakeQuant(one, active))
            parametrize.register_parametrization(module, "weight", out[-1])
    return out


def remove_fake_quant(model: nn.Module) -> None:
    """Back to plain float weights (the latent ones QAT trained); quantizing with the same spec then yields
    the exact weights the last forward passes saw."""
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


@dataclass
class QAT(TrainingHook):
    """Quantization-aware training: the model trains in float for `qat_start` of the steps, then with every
    quantizable weight fake-quantized; at the end its latent float weights remain, which the quantize stage
    rounds with the same quantizer."""

    spec: QuantSpec
    start_step: int = field(default=0, init=False, repr=False, compare=False)  # the step after which it is on
    parts: list[FakeQuant] = field(default_factory=list, init=False, repr=False, compare=False)

    def start(self, model: nn.Module, *, steps: int, init: Mapping[str, Any]) -> None:
        self.start_step = min(steps - 1, round(self.spec.method.qat_start * steps))
        self.parts = add_fake_quant(model, self.spec, active=self.start_step == 0)

    def after_step(self, model: nn.Module, step: int) -> None:
        if step == self.start_step:
            for part in self.parts:
                part.active = True

    def resume(self, model: nn.Module, step: int) -> None:
        for part in self.parts:
            part.active = step >= self.start_step

    def finish(self, model: nn.Module) -> None:
        remove_fake_quant(model)

    def settles_at(self, steps: int) -> int:
        return self.start_step
