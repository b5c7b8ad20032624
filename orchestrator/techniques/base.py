"""Compression techniques as plugins: what a method is made of, and the registry the YAML names them from.

A method is one class, registered with `register_technique(name)`, that holds:

- its **config**: the class is a frozen dataclass whose fields are the YAML keys of its pipeline entry
  (``{prune: {method: magnitude, scope: layer}}``), each checked when it is built (`check` metadata);
- its **checks**: `Technique.check` refuses, in one line, what it cannot run with the rest of the sweep;
- how it is **applied**: `PruneMethod.prune`, or `QuantizeMethod.quantize_tensor` (round-to-nearest
  methods) / `QuantizeMethod.quantize` (whole-model methods such as GPTQ);
- optional **training hooks** (`TrainingHook`): what it does while a model distils (gradual pruning,
  quantization-aware training) or recovers after it was applied (a codebook's centroids);
- how its integer form is **encoded** in and decoded from the artifact: an `EncodedTensor` subclass
  registered with `register_encoding`.

The training loop, the compression step and the artifact format call these and nothing else; a new
method is one module (tests/techniques/test_plugins.py registers a sign binarizer inside the test file
and sweeps it end to end). The strength of a technique (`sparsity`, `bits`, `group_size`) is a searched
parameter, not a field here: `uses` names the ones it reads.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from orchestrator.core.errors import ConfigError, show

STAGES = ("distill", "prune", "quantize")  # the order stages run in; any of them can be left out
STAGE_PARAMS = {"prune": ("sparsity",), "quantize": ("bits", "effective_bits", "group_size")}  # the searched strengths of each stage
FLOAT_BITS = {16: "float16", 32: "float32"}  # `bits` values that store floats, not 2^b integer levels
TECHNIQUES: dict[str, dict[str, type["Technique"]]] = {"prune": {}, "quantize": {}}  # stage -> method name -> class


def check(pred: Callable[[Any], bool], need: str, default: Any) -> Any:
    """A config field checked when the config is built: `pred(value)` must hold, `need` says what it demands."""
    return field(default=default, metadata={"check": (pred, need)})


def register_technique(name: str) -> Callable[[type["Technique"]], type["Technique"]]:
    """Class decorator: `method: <name>` in the YAML's pipeline entry for the class's stage builds this class."""

    def register(cls: type[Technique]) -> type[Technique]:
        cls.method = name
        TECHNIQUES[cls.stage][name] = cls
        return cls

    return register


def percent(value: Any) -> str:
    return f"{float(value):.0%}" if value is not None else "?"


class Checked:
    """A config dataclass that checks its fields when built (`check` metadata), so a config made in Python
    is held to the same rules as one read from YAML (where `config.load` names the file and key first)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = f.metadata.get("check")
            if rule is None:
                continue
            value = getattr(self, f.name)
            try:
                ok = rule[0](value)
            except TypeError:
                ok = False
            if not ok:
                raise ConfigError(f"{type(self).__name__}: `{f.name}` must be {rule[1]}, got {show(value)}")


class TrainingHook:
    """What a technique does while a model trains: set up before the optimizer sees the model, act after every
    optimizer step, and take down at the end. Hooks are dataclasses, small and picklable: they travel to Ray
    Train workers with the job, and their fields are part of the cache key of what trains with them. What is
    large (masks, a codebook) they read from the checkpoint training starts from (`init`)."""

    def start(self, model: nn.Module, *, steps: int, init: Mapping[str, Any]) -> None:
        """Before training (and before DDP wraps the model, which must see the structure it will run)."""

    def after_step(self, model: nn.Module, step: int) -> None:
        """After optimizer step `step` (1-based)."""

    def resume(self, model: nn.Module, step: int) -> None:
        """After a restarted worker group restored the training state of step `step`."""

    def finish(self, model: nn.Module) -> None:
        """After training and the final validation score: the model as the next stage takes it."""

    def settles_at(self, steps: int) -> int:
        """The step before which convergence checks do not count (the model is still changing under the hook)."""
        return 0


@dataclass(frozen=True)
class PruneResult:
    model: nn.Module  # the model passed in (mask methods) or a new, smaller one (structured)
    masks: dict[str, torch.Tensor]  # parameter name -> bool keep-mask; empty for structured pruning


@dataclass(frozen=True)
class Technique(Checked, abc.ABC):
    """A method of a pipeline stage (see the module docstring)."""

    stage: ClassVar[str]
    method: ClassVar[str]
    uses: ClassVar[tuple[str, ...]] = ()  # the searched parameters it reads, among its stage's (`STAGE_PARAMS`)
    recovery_steps: int = check(lambda v: v >= 0, "an integer >= 0", 0)  # distillation steps after it is applied

    def check(self, *, source: str, given: Set[str], distill: bool) -> None:
        """`ConfigError` for what this method cannot run with the rest of the sweep (`given`: the parameters set
        away from their defaults; `distill`: the pipeline distils a student)."""
        unused = sorted(set(given) & set(STAGE_PARAMS[self.stage]) - set(self.uses))
        if unused:
            raise ConfigError(f"{source}: `params.{unused[0]}` is not used by {self.stage} method {self.method}"
                              f"{self.why_unused(unused[0])}; remove the param")
        if not distill and self.during_distillation:
            raise ConfigError(f"{source}: `pipeline`: {self.trains_as} runs during distillation, and there is no distill "
                              "stage; add it or go one-shot")

    def why_unused(self, param: str) -> str:
        """Why this method ignores `param` (said after the error's first clause)."""
        return ""

    @property
    def during_distillation(self) -> bool:
        """It acts while the student distils (its `distill_hook`), so its strength is part of the student."""
        return False

    @property
    def trains_as(self) -> str:
        """How errors name its training-time form."""
        return f"{self.stage} method {self.method}"

    def distill_hook(self, params: Mapping[str, Any]) -> TrainingHook | None:
        """What it does during distillation with the trial's `params` (None: nothing)."""
        return None

    def describe(self, params: Mapping[str, Any]) -> str:
        """One sentence for the trial's description, e.g. "Prune 50% of the weights by magnitude (global)."."""
        return f"{self.stage.capitalize()} with {self.method}."

    def to_raw(self) -> dict[str, Any]:
        """The YAML form of its pipeline entry's options."""
        return {"method": self.method, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class PruneMethod(Technique):
    stage: ClassVar[str] = "prune"
    uses: ClassVar[tuple[str, ...]] = ("sparsity",)
    lm_head: bool = True  # also prune the output layer (magnitude, nm); a tied head is the token embedding

    @abc.abstractmethod
    def prune(self, model: nn.Module, sparsity: float) -> PruneResult:
        """Apply the method at `sparsity` (a method whose pattern fixes it ignores it)."""

    def describe(self, params: Mapping[str, Any]) -> str:
        what = self.describe_pruning(params)
        return f"{what}, then {self.recovery_steps} recovery steps." if self.recovery_steps else f"{what}."

    def describe_pruning(self, params: Mapping[str, Any]) -> str:
        return f"Prune {percent(params.get('sparsity'))} of the weights ({self.method})"
