"""Which stages a trial runs (always in the order of `STAGES`) and with which methods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.techniques.base import STAGES, PruneMethod, Technique, TrainingHook
from orchestrator.techniques.magnitude import MagnitudePruning
from orchestrator.techniques.quantize import QuantizeMethod, QuantSpec
from orchestrator.techniques.rounding import AffineQuantization


@dataclass(frozen=True)
class Pipeline:
    """The stages of a trial and their methods; without `distill` the model compressed is the teacher itself.

        >>> Pipeline().label
        'distill > prune:magnitude > quantize:affine'
    """

    distill: bool = True
    prune: PruneMethod | None = MagnitudePruning()
    quantize: QuantizeMethod | None = AffineQuantization()

    @property
    def stages(self) -> tuple[str, ...]:
        return tuple(s for s in STAGES if (self.distill if s == "distill" else getattr(self, s) is not None))

    @property
    def techniques(self) -> list[Technique]:
        """The pipeline's prune and quantize methods, in order."""
        return [t for t in (self.prune, self.quantize) if t is not None]

    @property
    def label(self) -> str:
        """One line for tags and logs, e.g. ``distill > prune:structured > quantize:symmetric``."""
        return " > ".join(s if s == "distill" else f"{s}:{getattr(self, s).method}" for s in self.stages) or "(none)"

    def quant_spec(self, params: Mapping[str, Any]) -> QuantSpec | None:
        """The trial's quantizer, or None when there is no quantize stage or `bits` keeps float32."""
        return self.quantize.spec(params) if self.quantize is not None else None

    @property
    def compression_params(self) -> tuple[str, ...]:
        """The params read only after the student is distilled: those of the techniques that do not act during
        distillation (gradual pruning and QAT make theirs part of the student)."""
        return tuple(name for t in self.techniques if not t.during_distillation for name in t.uses)

    def distill_hooks(self, params: Mapping[str, Any]) -> tuple[TrainingHook, ...]:
        """What the techniques do while the student distils with the trial's `params` (gradual pruning, QAT)."""
        return tuple(hook for t in self.techniques if (hook := t.distill_hook(params)) is not None)

    def describe(self, params: Mapping[str, Any]) -> list[str]:
        """The compression stages of one trial in words, from its `params` (YAML names)."""
        return [t.describe(params) for t in self.techniques]

    def to_raw(self) -> list[Any]:
        """The YAML form: ``[distill, {prune: {method: ..., ...}}, {quantize: {...}}]``."""
        return [stage if stage == "distill" else {stage: getattr(self, stage).to_raw()} for stage in self.stages]
