"""The Task seam: everything that depends on the model family and the data, behind one interface.

A task prepares and stores its data (train / validation / test), builds or loads the teacher, builds an
untrained student from a trial's parameters, draws training batches, scores a model on a held-out split,
gives the input that latency is timed on, and names a model in storage and rebuilds it. Everything else
(distillation, pruning, quantization, export, caching, search, tracking) is written once, against this.

A new task is one module: subclass `Task`, decorate it with `@register_task("name")`, and set
`task.name: name` in the YAML (its `task.options` are the class's keyword arguments), or pass an instance
to `Sweep(config, task=...)`. Instances travel to Ray workers by pickling: keep them small (data goes to
storage through `write_data`).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn import functional as F

from orchestrator import models
from orchestrator.config import PARAM_NAMES, ConfigError, SweepConfig
from orchestrator.config.schema import TaskConfig, did_you_mean, show

Split = Literal["train", "val", "test"]
TASKS: dict[str, type["Task"]] = {}


def register_task(name: str) -> Callable[[type["Task"]], type["Task"]]:
    """Class decorator: `task.name: <name>` in a search space builds this class."""

    def register(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return register


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space (names as in the YAML's `params`); `extra` holds a user task's own."""

    layers: int
    width: int
    heads: int
    beta: float
    lam: float
    temperature: float
    sparsity: float
    bits: int
    optimizer: str
    lr: float
    weight_decay: float = 0.0
    group_size: int = 64
    steps: int | None = None  # distillation steps (None: `distill.steps`)
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> "TrialParams":
        values = {k: v for k, v in params.items() if k in PARAM_NAMES}
        values["lam"] = values.pop("lambda")
        return cls(**values, extra={k: v for k, v in params.items() if k not in PARAM_NAMES})

    def by_name(self) -> dict[str, Any]:
        """Every parameter under its YAML name."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("lam", "extra")}
        return {**out, "lambda": self.lam, **self.extra}


class Task(abc.ABC):
    """What a sweep needs to know about a model family and its data. See the module docstring."""

    name: ClassVar[str] = ""
    user_params: ClassVar[bool] = False  # `params` may declare parameters of the task's own

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> "Task":
        """The task the YAML's `task` section describes (`task.options` are keyword arguments)."""
        return cls(**dict(cfg.options))

    def check(self, cfg: SweepConfig) -> None:
        """Raise `ConfigError` for settings this task cannot run, before anything starts."""

    def fingerprint(self) -> Any:
        """What, beyond the sweep's config, determines the models this task builds (part of every cache
        key): a task whose code or options change must return something else."""
        return self.name

    # -- data -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def data_key(self, cfg: SweepConfig) -> str:
        """A content hash of the data `write_data` would store (its cache key)."""

    @abc.abstractmethod
    def write_data(self, cfg: SweepConfig, path: Path) -> None:
        """Store the train / validation / test splits in one file at `path` (read back by `load_data`)."""

    @abc.abstractmethod
    def load_data(self, path: str | Path) -> Any:
        """The stored data, as `batch`, `evaluate` and `example` take it."""

    @abc.abstractmethod
    def batch(self, data: Any, split: Split, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch of `split`: inputs and targets, as the model and `hard_loss` take them."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, data: Any, split: Split, *, max_examples: int | None = None) -> dict[str, float]:
        """Score `model` on a held-out split: named metrics, `accuracy` (higher is better) among them, and
        `loss` (mean cross-entropy, nats) when it has one."""

    @abc.abstractmethod
    def example(self, data: Any) -> torch.Tensor:
        """A batch-1 held-out input: what latency is timed on."""

    def evaluation_settings(self, cfg: SweepConfig) -> Any:
        """The settings `evaluate`, `example` and `measure_extra` depend on beyond the data (part of the key
        under which a teacher's measurements are kept)."""
        return None

    def measure_extra(self, model: nn.Module, data: Any, *, threads: int) -> dict[str, float]:
        """More measured metrics of a compressed model (e.g. decoding speed)."""
        return {}

    def throughput_unit(self) -> str:
        """What `throughput_<unit>_per_s` counts: one example by default."""
        return "examples"

    def units_per_example(self, example: torch.Tensor) -> int:
        return 1

    def meta(self, data: Any) -> dict[str, Any]:
        """JSON-able facts stored with every artifact (e.g. a vocabulary)."""
        return {}

    def hard_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_hard (and the teacher's training loss): cross-entropy over the last axis."""
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    # -- models -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def teacher(self, cfg: SweepConfig, data: Any) -> nn.Module:
        """The teacher as it starts: pretrained, or freshly initialised (seeded) to train `teacher_steps`."""

    def teacher_steps(self, cfg: SweepConfig) -> int:
        """Training steps the product gives the teacher (0: it is used as it comes)."""
        return cfg.teacher.steps

    @abc.abstractmethod
    def teacher_fingerprint(self, cfg: SweepConfig) -> Any:
        """What identifies the teacher before training (its shape, or its pretrained source)."""

    @abc.abstractmethod
    def student(self, cfg: SweepConfig, params: TrialParams, data: Any, teacher: nn.Module) -> nn.Module:
        """An untrained student of `params`' shape (seeded by `cfg.seed`)."""

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """How storage names `model` (see `models.describe`)."""
        return models.describe(model)

    def build_model(self, description: dict[str, Any]) -> nn.Module:
        """An untrained model from `describe`'s dict."""
        return models.build(description)

    def model_builder(self) -> "Task":
        """What a logged MLflow model keeps to rebuild a student (`build_model`): the task itself by
        default; a task holding large things students do not need returns a lighter copy."""
        return self


def task_from_config(cfg: SweepConfig) -> Task:
    """The registered task `cfg.task.name` names."""
    name = cfg.task.name
    if name not in TASKS:
        raise ConfigError(f"{cfg.source}: `task.name` {show(name)} is not a registered task{did_you_mean(name, TASKS)}; known: {', '.join(sorted(TASKS))} "
                          "(a task of your own: task.name python with task.entry, or Sweep(config, task=...))")
    try:
        return TASKS[name].from_config(cfg.task)
    except ConfigError as e:
        raise ConfigError(f"{cfg.source}: {e}") from None


def import_entry(entry: str) -> Callable[..., Any]:
    """`package.module:attribute`, imported (this runs that module's code)."""
    module_name, sep, attribute = entry.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"`task.entry` must be 'package.module:function', got {show(entry)}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"`task.entry` {show(entry)}: cannot import {module_name} ({e}); "
                          "run from the directory that holds it or install it") from None
    if not hasattr(module, attribute):
        raise ConfigError(f"`task.entry` {show(entry)}: {module_name} has no {show(attribute)}")
    return getattr(module, attribute)
