"""Compression techniques as configs: one frozen dataclass per method, named in the YAML's `pipeline`.

Each method's handler is registered under its config class in its stage (`stages/prune.py`,
`stages/quantize.py`). Adding a method is one class here and one registered function there. The
strength of a technique (`sparsity`, `bits`, `group_size`) is a searchable parameter, not a field here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

PRUNE_METHODS: dict[str, type["PruneMethod"]] = {}
QUANTIZE_METHODS: dict[str, type["QuantizeMethod"]] = {}
STAGES = ("distill", "prune", "quantize")  # the order stages run in; any of them can be left out


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _pct(value: Any) -> str:
    return f"{float(value):.0%}" if value is not None else "?"


def _check(pred: Any, need: str, default: Any) -> Any:
    return field(default=default, metadata={"check": (pred, need)})


def _method(table: dict[str, type], name: str) -> Any:
    def register(cls: type) -> type:
        cls.method = name
        table[name] = cls
        return cls

    return register


@dataclass(frozen=True)
class PruneMethod:
    method: ClassVar[str]
    recovery_steps: int = _check(lambda v: v >= 0, "an integer >= 0", 0)  # distillation steps after one-shot pruning, the pruned weights held at zero (or the smaller shape kept)
    lm_head: bool = True  # also prune the output layer (magnitude, nm); a tied head is the token embedding


@_method(PRUNE_METHODS, "magnitude")
@dataclass(frozen=True)
class MagnitudePruning(PruneMethod):
    """Unstructured: zero the `sparsity` fraction of Linear weights with least |w|."""

    scope: Literal["global", "layer"] = "global"  # rank all Linear weights together, or each layer alone
    schedule: Literal["oneshot", "gradual"] = "oneshot"  # gradual: during distillation, Zhu & Gupta's cubic schedule
    start: float = _check(lambda v: 0 <= v < 1, "a number in [0, 1)", 0.1)  # gradual: fraction of distillation steps before the first mask
    end: float = _check(lambda v: 0 < v <= 1, "a number in (0, 1]", 0.7)  # gradual: fraction of steps at which `sparsity` is reached
    every: int = _check(lambda v: v >= 1, "an integer >= 1", 10)  # gradual: steps between mask updates


@_method(PRUNE_METHODS, "structured")
@dataclass(frozen=True)
class StructuredPruning(PruneMethod):
    """Remove the `sparsity` fraction of MLP neurons and/or attention heads of every block, least important
    first: the model becomes a smaller dense one."""

    target: Literal["mlp", "heads", "both"] = "mlp"
    norm: Literal["l1", "l2"] = "l2"  # importance: this norm of a neuron's (head's) in and out weights


@_method(PRUNE_METHODS, "nm")
@dataclass(frozen=True)
class SemiStructuredPruning(PruneMethod):
    """N:M: keep the `n` largest |w| of every `m` consecutive weights along a Linear layer's input; the
    pattern fixes the sparsity (1 − n/m), so `params.sparsity` is not used."""

    n: int = _check(lambda v: v >= 1, "an integer >= 1", 2)
    m: int = _check(lambda v: v >= 2, "an integer >= 2", 4)


@dataclass(frozen=True)
class QuantizeMethod:
    method: ClassVar[str]
    granularity: Literal["tensor", "channel", "group"] = "channel"  # one scale per tensor, per output row, or per `group_size` inputs of a row
    mode: Literal["ptq", "qat"] = "ptq"  # qat: fake quantization (straight-through) during distillation, then the same quantizer after it
    qat_start: float = _check(lambda v: 0 <= v < 1, "a number in [0, 1)", 0.5)  # qat: fraction of the steps trained in float before fake quantization starts
    kernel: Literal["auto", "dequantized"] = "auto"  # auto: 8-bit symmetric per-tensor/channel Linear layers run torch's int8 kernels; dequantized: float always
    embeddings: bool = True  # also quantize the token and position tables
    recovery_steps: int = _check(lambda v: v >= 0, "an integer >= 0", 0)  # distillation steps after quantizing (from the teacher's outputs; without `distill`, the teacher fine-tunes its own compressed copy): QAT from the quantized weights (codebook: the centroids, assignments fixed)


@_method(QUANTIZE_METHODS, "affine")
@dataclass(frozen=True)
class AffineQuantization(QuantizeMethod):
    """Min-max affine: 2^b levels spanning each group's [min, max], zero exactly representable."""


@_method(QUANTIZE_METHODS, "symmetric")
@dataclass(frozen=True)
class SymmetricQuantization(QuantizeMethod):
    """Symmetric: levels −(2^(b−1)−1)..2^(b−1)−1 times max|w| / (2^(b−1)−1); zero point fixed."""


@_method(QUANTIZE_METHODS, "gptq")
@dataclass(frozen=True)
class GPTQQuantization(QuantizeMethod):
    """GPTQ: the affine grid, each Linear layer's rounding error compensated through the inverse Hessian of
    its inputs on calibration windows from the training split (`stages/gptq.py`); post-training only."""

    act_order: bool = True  # visit input columns in decreasing order of their Hessian diagonal (static group scales)
    damping: float = _check(lambda v: 0 < v < 1, "a number in (0, 1)", 0.01)  # added to H's diagonal, as a fraction of its mean
    calibration_windows: int = _check(lambda v: v >= 1, "an integer >= 1", 128)  # training windows (examples) whose inputs give each layer's Hessian


@_method(QUANTIZE_METHODS, "codebook")
@dataclass(frozen=True)
class CodebookQuantization(QuantizeMethod):
    """Trained weight sharing (Deep Compression): each tensor, row or group shares a k-means codebook of
    2^b centroids; weights store b-bit indices. `recovery_steps` fine-tunes the centroids by distillation
    with the assignments fixed (`stages/codebook.py`)."""

    granularity: Literal["tensor", "channel", "group"] = "tensor"  # one codebook per tensor, per output row, or per `group_size` inputs of a row
    iterations: int = _check(lambda v: v >= 1, "an integer >= 1", 25)  # k-means (Lloyd) iterations, from centroids spaced evenly over [min, max]


@dataclass(frozen=True)
class Pipeline:
    """Which stages a trial runs (always in the order of `STAGES`) and how. Without `distill` the model
    compressed is the teacher itself."""

    distill: bool = True
    prune: PruneMethod | None = MagnitudePruning()
    quantize: QuantizeMethod | None = AffineQuantization()

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if (self.distill if s == "distill" else getattr(self, s) is not None))

    @property
    def gradual_pruning(self) -> bool:
        return isinstance(self.prune, MagnitudePruning) and self.prune.schedule == "gradual"

    @property
    def qat(self) -> bool:
        return self.quantize is not None and self.quantize.mode == "qat"

    @property
    def label(self) -> str:
        """One line for tags and logs, e.g. ``distill > prune:structured > quantize:symmetric``."""
        return " > ".join(s if s == "distill" else f"{s}:{getattr(self, s).method}" for s in self.stages) or "(none)"

    def describe(self, p: Mapping[str, Any]) -> str:
        """One trial's pipeline in words, from its parameters `p` (YAML names), e.g. "Distil a 2-layer,
        64-wide student for 300 steps (...). Prune 50% of the weights by magnitude (global, one-shot).
        Quantize to 4 bits: affine, per channel. Pack the weights and measure the model." """
        g = p.get
        words = []
        if self.distill:
            words.append(f"Distil a {g('layers')}-layer, {g('width')}-wide student ({g('heads')} heads) from the teacher for "
                         f"{g('steps')} steps: loss = soft (temperature {_num(g('temperature'))}) + {_num(g('lambda'))} x hard "
                         f"+ {_num(g('beta'))} x hidden, {g('optimizer')} at lr {_num(g('lr'))}.")
        else:
            words.append("Compress the teacher itself.")
        prune = self.prune
        if isinstance(prune, SemiStructuredPruning):
            words.append(f"Prune {prune.n}:{prune.m} (keep {prune.n} of every {prune.m} weights)")
        elif isinstance(prune, StructuredPruning):
            words.append(f"Prune {_pct(g('sparsity'))} of the {prune.target} units by {prune.norm} norm")
        elif isinstance(prune, MagnitudePruning):
            words.append(f"Prune {_pct(g('sparsity'))} of the weights by magnitude ({prune.scope}, {prune.schedule})")
        if prune is not None:
            words[-1] += f", then {prune.recovery_steps} recovery steps." if prune.recovery_steps else "."
        quant = self.quantize
        if quant is not None:
            bits = g("bits")
            if bits is not None and int(bits) >= 32:
                words.append("Keep float32 weights (bits 32).")
            else:
                grain = f"in groups of {g('group_size')}" if quant.granularity == "group" else f"per {quant.granularity}"
                extra = ", trained with fake quantization (QAT)" if quant.mode == "qat" else ""
                extra += f", then {quant.recovery_steps} recovery steps" if quant.recovery_steps else ""
                words.append(f"Quantize to {bits} bits: {quant.method}, {grain}{extra}.")
        words.append("Pack the weights and measure the model.")
        return " ".join(words)

    def to_raw(self) -> list[Any]:
        """The YAML form: ``[distill, {prune: {method: ..., ...}}, {quantize: {...}}]``."""
        out: list[Any] = []
        for stage in self.stages:
            if stage == "distill":
                out.append("distill")
            else:
                technique = getattr(self, stage)
                out.append({stage: {"method": technique.method, **dataclasses.asdict(technique)}})
        return out
