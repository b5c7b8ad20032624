"""Task `python`: a user's own model, data and metric, compressed like the built-in tasks.

From Python, pass an instance to the sweep::

    task = PythonTask(data={"train": (x, y), "val": (xv, yv), "test": (xt, yt)},
                      teacher=my_trained_net, student=lambda width, layers: MyNet(width, layers))
    orchestrator.Sweep.from_yaml("space.yaml", task=task).run()

or name a factory in the YAML (`task: {name: python, entry: "package.module:make_task", options: {...}}`;
importing it runs that module's code). The student builder receives the searched parameters it names
(`layers`, `width`, `heads` or parameters of your own declared under `params`). Every prune and quantize
method works on the model's `nn.Linear` / `nn.Embedding` layers; structured pruning when the model
implements `structured_units` / `resized` (see `orchestrator.models`); the hidden-state term (β > 0)
when its forward takes `hidden=True` and returns `(output, [per-layer states])`.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Union

import torch
from torch import nn
from torch.nn import functional as F

from orchestrator.config.params import CORE_PARAMS
from orchestrator.config.schema import SweepConfig, TaskConfig
from orchestrator.core.compressible import UnitGroup, UnitKind, UnitSlice
from orchestrator.core.errors import ConfigError
from orchestrator.core.keys import content_key
from orchestrator.core.space import Fixed
from orchestrator.tasks.base import Split, Task, TrialParams, Units, import_entry, register_task

SPLITS = ("train", "val", "test")
SplitData = Union[tuple[torch.Tensor, torch.Tensor], Iterable[tuple[torch.Tensor, torch.Tensor]]]
Evaluate = Callable[[nn.Module, torch.Tensor, torch.Tensor], Mapping[str, float]]


class UserModel(nn.Module):
    """A user's module as the stages see a model: ``forward(x, hidden=...) -> (output, states)`` and a
    description (`config_dict`) its task rebuilds it from."""

    architecture = "python"  # rebuilt by the task (`PythonTask.build_model`), not by the registry

    def __init__(self, net: nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.net = net
        self.config = config  # {"role": "teacher" | "student", "params": {...}, "resized": [[kind, n], ...]}

    def forward(self, x: torch.Tensor, *, hidden: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if hidden and _takes_hidden(self.net):
            output, states = self.net(x, hidden=True)
            return output, list(states)
        output = self.net(x)
        return (output[0] if isinstance(output, tuple) else output), []

    def config_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)

    def output_layer(self) -> nn.Module | None:
        get = getattr(self.net, "output_layer", None)
        return get() if callable(get) else None

    def structured_units(self, kind: UnitKind) -> list[UnitGroup]:
        if not callable(getattr(self.net, "structured_units", None)) or not callable(getattr(self.net, "resized", None)):
            raise TypeError(f"structured pruning needs structured_units() and resized() on the model; "
                            f"{type(self.net).__name__} has none (use magnitude or nm pruning)")
        groups = self.net.structured_units(kind)
        return [UnitGroup(tuple(UnitSlice("net." + s.param, s.dim, s.index) for s in g.slices)) for g in groups]

    def resized(self, kind: UnitKind, n: int) -> "UserModel":
        return UserModel(self.net.resized(kind, n), {**self.config, "resized": [*self.config.get("resized", []), [kind, n]]})


def _own(name: str) -> bool:
    """A parameter of the task's own, not one of the core's."""
    return name not in CORE_PARAMS


def _takes_hidden(net: nn.Module) -> bool:
    return "hidden" in inspect.signature(net.forward).parameters


def _materialise(split: str, data: SplitData) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) tensors of a split given as a pair of tensors or an iterable of batches."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    else:
        batches = list(data)
        if not batches:
            raise ValueError(f"data[{split!r}] holds no batches")
        x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"data[{split!r}]: {len(x)} inputs and {len(y)} targets; give as many of each, at least one")
    return x.detach().cpu(), y.detach().cpu()


def _source_hash(*objects: Any) -> str:
    """What a function or module's code is: its source, or its qualified name where there is none."""
    parts = []
    for obj in objects:
        if obj is None:
            parts.append(None)
            continue
        try:
            parts.append(inspect.getsource(obj))
        except (OSError, TypeError):
            parts.append(f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}")
    return content_key(*parts)


def default_evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Classification: argmax accuracy and mean cross-entropy over the split, in batches of 256."""
    correct, loss = 0, 0.0
    for i in range(0, len(x), 256):
        out = model(x[i : i + 256])
        out = out[0] if isinstance(out, tuple) else out  # (B, C)
        correct += int((out.argmax(-1) == y[i : i + 256]).sum())
        loss += float(F.cross_entropy(out, y[i : i + 256], reduction="sum"))
    return {"accuracy": correct / len(x), "loss": loss / len(x)}


@register_task("python")
class PythonTask(Task):
    """Your model and data.

    Args:
        data: {"train": ..., "val": ..., "test": ...}, each an (inputs, targets) pair of tensors or an
            iterable of such batches (read once and stored). Validation is what a trial may look at while
            training; test is scored once per trial, after compression.
        teacher: the teacher module; trained already, or trained here for `teacher_steps` with `loss`.
        student: builds an untrained student from the searched parameters it names (keyword arguments).
        evaluate: `fn(model, inputs, targets) -> {"accuracy": ..., other metrics}` on a held-out split,
            higher accuracy better (default: classification accuracy and cross-entropy `loss`). It gets
            your module as it runs after compression.
        loss: `fn(output, target) -> scalar`, the hard-label term L_hard and the teacher's training loss
            (default: cross-entropy over the last axis).
        teacher_steps: steps of training the teacher gets here (0: use it as given).
        label: a name for logs; part of the cache keys.
    """

    open_params = True  # the student builder's signature says which parameters it takes (`check`)
    units = Units("example", "example")

    def __init__(
        self, *, data: Mapping[str, SplitData], teacher: nn.Module, student: Callable[..., nn.Module],
        evaluate: Evaluate | None = None, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        teacher_steps: int = 0, label: str = "python",
    ) -> None:
        missing = [s for s in SPLITS if s not in data]
        if missing:
            raise ValueError(f"PythonTask data needs the splits {', '.join(SPLITS)}; missing {', '.join(missing)}")
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"PythonTask teacher must be an nn.Module, got {type(teacher).__name__}")
        if teacher_steps < 0:
            raise ValueError(f"PythonTask teacher_steps must be >= 0, got {teacher_steps}")
        self._data = {s: _materialise(s, data[s]) for s in SPLITS}
        self._teacher = teacher
        self._student = student
        self._evaluate = evaluate or default_evaluate
        self._loss = loss
        self._teacher_steps = teacher_steps
        self.label = label

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> Task:
        """`task.entry` names a factory; it is called with `task.options` and returns the task."""
        if cfg.entry is None:
            raise ConfigError("task python needs `task.entry: package.module:make_task` (or pass task= to the Sweep)")
        try:
            task = import_entry(cfg.entry)(**dict(cfg.options))
        except TypeError as e:
            raise ConfigError(f"`task.entry` {cfg.entry!r} refused `task.options` {dict(cfg.options)}: {e}") from None
        if not isinstance(task, Task):
            raise ConfigError(f"`task.entry` {cfg.entry!r} returned a {type(task).__name__}, not an orchestrator Task")
        return task

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_data"}  # trials read the stored copy

    # -- config -------------------------------------------------------------------------------
    def check(self, cfg: SweepConfig) -> None:
        src = cfg.source
        for key, value in (("teacher.model", cfg.teacher.model), ("distill.student", cfg.distill.student),
                           ("task.files", cfg.task.files), ("task.dataset", cfg.task.dataset)):
            if value is not None:
                raise ConfigError(f"{src}: `{key}` is not used by task python (your task brings its own); drop it")
        accepted = inspect.signature(self._student).parameters
        declared = dict(cfg.params)
        for name in declared:
            if _own(name) and not self._takes(name):
                raise ConfigError(f"{src}: `params.{name}` is not an argument of the student builder "
                                  f"{getattr(self._student, '__name__', self._student)!r} (it takes {', '.join(accepted) or 'none'})")
        for name, p in accepted.items():
            if p.default is inspect.Parameter.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and name not in declared:
                raise ConfigError(f"{src}: the student builder needs `{name}`; declare `params.{name}` (a value, choices or a range)")
        if cfg.params["beta"] != Fixed(0.0) and not _takes_hidden(self._teacher):
            raise ConfigError(f"{src}: `params.beta` weighs hidden states, but the teacher's forward takes no `hidden` "
                              "argument; fix `params.beta: 0` or return (output, [states]) when hidden=True")

    def fingerprint(self) -> Any:
        return {"task": self.name, "label": self.label, "code": _source_hash(self._student, self._evaluate, self._loss)}

    # -- data ---------------------------------------------------------------------------------
    def data_key(self, cfg: SweepConfig) -> str:
        digest = hashlib.sha256()
        for split in SPLITS:
            for t in self._data[split]:
                digest.update(f"{split}{tuple(t.shape)}{t.dtype}".encode())
                digest.update(t.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def write_data(self, cfg: SweepConfig, path: Path) -> None:
        torch.save({s: list(self._data[s]) for s in SPLITS}, path)

    def load_data(self, path: str | Path) -> dict[str, list[torch.Tensor]]:
        return torch.load(path, weights_only=True)

    def batch(self, data: Any, split: Split, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = data[split]
        rows = torch.randint(len(x), (batch_size,), generator=generator)
        return x[rows], y[rows]

    def pool(self, data: Any, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Distinct training examples in a seeded random order: the whole training split when `n` covers it."""
        x, y = data["train"]
        rows = torch.randperm(len(x), generator=generator)[:n]
        return x[rows], y[rows]

    @torch.inference_mode()
    def evaluate(self, model: nn.Module, data: Any, split: Split, *, max_examples: int | None = None) -> dict[str, float]:
        x, y = data[split]
        if max_examples is not None:
            x, y = x[:max_examples], y[:max_examples]
        model.eval()
        net = model.net if isinstance(model, UserModel) else model
        metrics = {k: float(v) for k, v in self._evaluate(net, x, y).items()}
        if "accuracy" not in metrics:
            raise ValueError(f"the task's evaluate returned {sorted(metrics)}; it must return `accuracy` (higher is better)")
        return metrics

    def example(self, data: Any) -> torch.Tensor:
        return data["test"][0][:1]

    def hard_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._loss(output, target) if self._loss is not None else super().hard_loss(output, target)

    # -- models -------------------------------------------------------------------------------
    def teacher(self, cfg: SweepConfig, data: Any) -> nn.Module:
        return UserModel(copy.deepcopy(self._teacher), {"role": "teacher"})

    def teacher_steps(self, cfg: SweepConfig) -> int:
        return self._teacher_steps

    def teacher_fingerprint(self, cfg: SweepConfig) -> Any:
        digest = hashlib.sha256(type(self._teacher).__qualname__.encode())
        for name, t in self._teacher.state_dict().items():
            digest.update(name.encode())
            digest.update(t.detach().cpu().contiguous().numpy().tobytes())
        return {"weights": digest.hexdigest()[:16], "task": self.fingerprint()}

    def student(self, cfg: SweepConfig, params: TrialParams, data: Any, teacher: nn.Module) -> nn.Module:
        return self._build_student(params.by_name(), cfg.seed)

    def public_model(self, model: nn.Module) -> nn.Module:
        """Your module itself, as your builder made it (pruned, quantized and reloaded)."""
        return model.net if isinstance(model, UserModel) else model

    def _takes(self, name: str) -> bool:
        """Whether the student builder receives the parameter `name`: one it names, or any parameter of the
        task's own when it takes **kwargs."""
        accepted = inspect.signature(self._student).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
        return name in accepted or (takes_any and _own(name))

    def _build_student(self, values: Mapping[str, Any], seed: int) -> UserModel:
        args = {k: v for k, v in values.items() if self._takes(k)}
        torch.manual_seed(seed)
        net = self._student(**args)
        if not isinstance(net, nn.Module):
            raise TypeError(f"the student builder returned a {type(net).__name__}, not an nn.Module")
        return UserModel(net, {"role": "student", "params": args, "seed": seed})

    def model_builder(self) -> "PythonTask":
        """A copy without the teacher: a student is built by the student function alone."""
        light = copy.copy(self)
        light._teacher = None
        return light

    def build_model(self, description: dict[str, Any]) -> nn.Module:
        if description["architecture"] != UserModel.architecture:
            return super().build_model(description)
        config = description["config"]
        if config["role"] == "teacher":
            model = UserModel(copy.deepcopy(self._teacher), {"role": "teacher"})
        else:
            model = self._build_student(config["params"], config["seed"])
        for kind, n in config.get("resized", []):
            model = model.resized(kind, n)
        return model
