"""Runtimes: where a compressed model runs and is timed. `torch` runs the packed artifact itself (eager, its
dequantized weights, 8-bit symmetric Linear layers on torch's int8 kernels); another runtime runs a file
exported from the artifact (`onnxruntime`: an `.onnx` graph on ONNX Runtime's low-bit kernels).

`measure.runtime` names the runtime the measurement service times every model in; `export.formats` lists
the files every trial also writes (and its MLflow run keeps). A runtime of your own registers with
`register_runtime`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from orchestrator.core.errors import ConfigError

from orchestrator.io.artifact import load_artifact
from orchestrator.techniques.base import FLOAT_BITS
from orchestrator.techniques.quantize import EncodedTensor

RUNTIMES: dict[str, "Runtime"] = {}  # `measure.runtime` -> the runtime
FORMATS: dict[str, "Runtime"] = {}  # `export.formats` entry -> the runtime whose file it is


def register_runtime(cls: type["Runtime"]) -> type["Runtime"]:
    """Class decorator: `measure.runtime: <cls.name>` (and `export.formats: [<cls.format>]`) use an instance."""
    RUNTIMES[cls.name] = runtime = cls()
    if cls.format:
        FORMATS[cls.format] = runtime
    return cls


def refuse(refused: Mapping[str, str], what: str, fix: str) -> None:
    """One line for the weights a runtime cannot take, {weight: why} (none: nothing): "<what> weight <name> (and N
    more): <why>; <fix>"."""
    if refused:
        name, why = next(iter(refused.items()))
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise ConfigError(f"{what} weight {name}{more}: {why}; {fix}")


@dataclass
class Exported:
    """A file written for a runtime, and how the model's quantized weights run there."""

    path: Path
    kernels: dict[str, str] = field(default_factory=dict)  # weight -> the kernel that runs it
    dequantized: dict[str, str] = field(default_factory=dict)  # weight -> why it runs as float (the fallback)

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


class Runtime(abc.ABC):
    name: ClassVar[str]  # `measure.runtime`
    format: ClassVar[str | None] = None  # `export.formats` entry and file suffix; None: it runs the artifact itself
    fallback: ClassVar[bool] = False  # it can run a weight it has no kernel for as float (`export.fallback: dequantized`)

    def file_name(self, artifact: str | Path) -> str:
        """The name of the file it runs, beside `artifact` (model.orc -> model.onnx)."""
        return f"{Path(str(artifact)).stem}.{self.format}" if self.format else Path(str(artifact)).name

    def export(self, artifact: Path, out: Path, example: torch.Tensor, *, build: Callable[[dict[str, Any]], nn.Module],
               encodings: Mapping[str, type[EncodedTensor]], dequantized: bool) -> Exported:
        """Write the model of `artifact` to `out` in this runtime's format."""
        raise NotImplementedError(f"runtime {self.name} runs the artifact itself")

    @abc.abstractmethod
    def load(self, path: Path, *, build: Callable[[dict[str, Any]], nn.Module],
             encodings: Mapping[str, type[EncodedTensor]] | None, threads: int, device: str) -> Any:
        """What `path` (the artifact, or the file `export` wrote) runs as: callable like a task's model,
        `model(x)` -> (outputs, hidden states)."""

    def cannot_run(self, quantize: Any, values: Mapping[str, list[Any] | None], *, task: str) -> str | None:
        """Why some trial of a sweep of `task` could give a model or weight this runtime cannot run, judged from the
        quantize method and every value its params can take (None: a continuous range); None when none could."""
        return None


def integer_widths(quantize: Any, values: Mapping[str, list[Any] | None]) -> tuple[list[int], str]:
    """Every integer width a weight of the sweep can get (from `params.bits`, or a mixed allocation's
    `candidate_bits`), and the key that sets them (for a refusal)."""
    if getattr(quantize, "allocation", "uniform") == "sensitivity":
        return [int(b) for b in quantize.candidate_bits if int(b) not in FLOAT_BITS], "`quantize.candidate_bits`"
    return [int(b) for b in values.get("bits") or [] if int(b) not in FLOAT_BITS], "`params.bits`"


@register_runtime
class TorchRuntime(Runtime):
    """PyTorch eager on the packed artifact: what `orchestrator.load_model` returns."""

    name = "torch"

    def load(self, path: Path, *, build: Callable[[dict[str, Any]], nn.Module],
             encodings: Mapping[str, type[EncodedTensor]] | None, threads: int, device: str) -> Any:
        return load_artifact(path, build, encodings)[0].to(device).eval()
