"""The Task seam: everything that depends on the model family and the data, behind one interface.

A task prepares and stores its data (train / validation / test), builds or loads the teacher, declares its
students' shape parameters and builds an untrained student from a trial's parameters, draws training
batches, scores a model on a held-out split, gives the input that latency is timed on, and names a model in
storage and rebuilds it. Everything else (distillation, pruning, quantization, export, caching, search,
tracking) is written once, against this.

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

from orchestrator.config.params import CORE_PARAMS, build_params, build_points
from orchestrator.config.schema import SweepConfig, TaskConfig
from orchestrator.core.errors import ConfigError, did_you_mean, show
from orchestrator.core.space import Fixed, ParamRule
from orchestrator.models.registry import build, describe

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
class Units:
    """What a task's counts count: the settings named in tokens (`task.eval_tokens`, `distill.val_tokens`,
    `early_stopping.val_tokens`) count `position`s, and a pool of training draws (`distill.cache_blocks`)
    counts `example`s."""

    position: str  # one scored prediction: "position" (of a language model's next-token predictions), "example"
    example: str  # one training draw: "window" (of `task.context` positions), "example"

    def count(self, n: float, what: Literal["position", "example"]) -> str:
        """`8192 tokens`, `1 example`."""
        word = self.position if what == "position" else self.example
        return f"{n:g} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class TrialParams:
    """One point of the search space: the core's parameters (distillation and compression), and the task's
    own (`shape`: e.g. layers, width and heads of a GPT student, or whatever your student builder takes)."""

    beta: float
    lam: float
    temperature: float
    sparsity: float
    bits: int
    optimizer: str
    lr: float
    weight_decay: float = 0.0
    group_size: int = 64
    effective_bits: float | None = None  # quantize `allocation: sensitivity`: the budget widths are allocated under
    steps: int | None = None  # distillation steps (None: `distill.steps`)
    shape: Mapping[str, Any] = field(default_factory=dict)  # the task's own parameters, by the YAML's names

    @classmethod
    def from_config(cls, params: Mapping[str, Any]) -> "TrialParams":
        values = {k: v for k, v in params.items() if k in CORE_PARAMS}
        values["lam"] = values.pop("lambda")
        return cls(**values, shape={k: v for k, v in params.items() if k not in CORE_PARAMS})

    def by_name(self) -> dict[str, Any]:
        """Every parameter under its YAML name."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("lam", "shape")}
        return {**out, "lambda": self.lam, **self.shape}


class Task(abc.ABC):
    """What a sweep needs to know about a model family and its data. See the module docstring."""

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, ParamRule]] = {}  # its students' shape parameters (beyond the core's), by name
    open_params: ClassVar[bool] = False  # `params` may also declare names it does not list (its builder says which it takes)
    param_hints: ClassVar[Mapping[str, str]] = {}  # a name it does not take -> why not, and what to do instead
    units: ClassVar[Units] = Units("example", "example")

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> "Task":
        """The task the YAML's `task` section describes (`task.options` are keyword arguments)."""
        return cls(**dict(cfg.options))

    @classmethod
    def bind(cls, cfg: SweepConfig) -> SweepConfig:
        """`cfg` as this task runs it: its name, its parameters (the core's and this task's own) each checked
        against its rule, with this task's defaults filled; `ConfigError` for a parameter it does not take."""
        rules = {**cls.params, **CORE_PARAMS}  # the task's shape first: the order the sampler suggests them in
        raw = cfg.raw_params()
        previous = TASKS.get(cfg.task.name)
        # a config another task bound already (it filled in every parameter of its own): its defaults are not this
        # task's parameters; a config read but not yet bound holds only what was given, all of it kept
        if previous is not None and previous is not cls and set(previous.params) <= set(cfg.params):
            raw = {n: v for n, v in raw.items() if not (n in previous.params and n not in rules
                                                        and cfg.params[n] == Fixed(previous.params[n].default))}
        for name in raw:
            if name not in rules and not cls.open_params:
                if name in cls.param_hints:
                    raise ConfigError(f"{cfg.source}: `params.{name}` does not apply to {cls.name}: {cls.param_hints[name]}")
                raise ConfigError(f"{cfg.source}: `params.{name}` is not a searchable parameter{did_you_mean(name, rules)}; "
                                  f"known: {', '.join(rules)}")
        params = build_params(raw, cfg.source, rules=rules, open=cls.open_params)
        given = [n for n, spec in params.items() if n not in CORE_PARAMS and spec != Fixed(rules[n].default if n in rules else None)]
        if given and not cfg.pipeline.distill:
            raise ConfigError(f"{cfg.source}: `params.{given[0]}` applies to students, but `pipeline` has no distill stage, so "
                              "the model compressed is the teacher (`teacher.*`); remove the param or add distill to the pipeline")
        points = build_points([dict(p) for p in cfg.initial_points], params, cfg.source, rules)
        bound = dataclasses.replace(cfg, task=dataclasses.replace(cfg.task, name=cls.name or cfg.task.name), params=params,
                                    initial_points=points)
        cls.check_config(bound)
        return bound

    @classmethod
    def check_config(cls, cfg: SweepConfig) -> None:
        """`ConfigError` for settings of `cfg` (bound) this kind of task cannot run: what the config alone tells
        (how its parameters fit together, the sections it uses), checked whenever a config is bound."""

    def check(self, cfg: SweepConfig) -> None:
        """`ConfigError` for what this task object cannot run (e.g. parameters your student builder does not take),
        before anything starts (`cfg` is bound)."""

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

    def student_depths(self, cfg: SweepConfig) -> list[int] | None:
        """How many hidden states (`model(x, hidden=True)`) the sweep's students can return, when the task knows
        (the teacher-output pool then keeps only the teacher layers some student is mapped to); None: unknown."""
        return None

    def pool(self, data: Any, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` training draws for the teacher-output pool (`distill.cache_blocks`); by default `batch`'s random
        draws (a language model's windows: distinct in practice). A task with a finite training split gives
        distinct examples, all of them when `n` covers the split."""
        return self.batch(data, "train", n, generator)

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, data: Any, split: Split, *, max_examples: int | None = None) -> dict[str, float]:
        """Score `model` on a held-out split: named metrics, `accuracy` (higher is better) among them, and
        `loss` (mean cross-entropy, nats) when it has one; `eval_positions` when it scored fewer than asked."""

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

    def describe_student(self, shape: Mapping[str, Any]) -> str:
        """A student of these shape parameters, in words, for a trial's description."""
        return "a student" + (f" ({', '.join(f'{k} {v}' for k, v in shape.items())})" if shape else "")

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """How storage names `model` (see `models.registry.describe`)."""
        return describe(model)

    def build_model(self, description: dict[str, Any]) -> nn.Module:
        """An untrained model from `describe`'s dict."""
        return build(description)

    def public_model(self, model: nn.Module) -> nn.Module:
        """The model a user gets back from `load_model` (a task of your own: your module itself)."""
        return model

    def model_builder(self) -> "Task":
        """What a logged MLflow model keeps to rebuild a student (`build_model`): the task itself by
        default; a task holding large things students do not need returns a lighter copy."""
        return self


def task_class(name: str, source: str) -> type[Task]:
    """The registered task class `name`, or a `ConfigError` that lists the known ones."""
    if name not in TASKS:
        raise ConfigError(f"{source}: `task.name` {show(name)} is not a registered task{did_you_mean(name, TASKS)}; known: "
                          f"{', '.join(sorted(TASKS))} (a task of your own: task.name python with task.entry, or "
                          "Sweep(config, task=...))")
    return TASKS[name]


def task_from_config(cfg: SweepConfig) -> Task:
    """The registered task `cfg.task.name` names."""
    cls = task_class(cfg.task.name, cfg.source)
    try:
        return cls.from_config(cfg.task)
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
