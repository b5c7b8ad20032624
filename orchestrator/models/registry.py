"""The one architecture registry that checkpoints and artifacts name models by: `describe` gives a model's
name and shape, `build` makes an untrained model of that shape again."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ARCHITECTURES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_architecture(name: str) -> Callable[[type], type]:
    """Class decorator: `name` in artifacts and checkpoints rebuilds the class by `cls.from_config_dict`."""

    def register(cls: type) -> type:
        cls.architecture = name
        ARCHITECTURES[name] = cls.from_config_dict
        return cls

    return register


def describe(model: nn.Module) -> dict[str, Any]:
    """``{"architecture": name, "config": {...}}``: what `build` (or the task) rebuilds the model from."""
    if not hasattr(model, "config_dict") or not hasattr(model, "architecture"):
        raise TypeError(f"a {type(model).__name__} is not a compressible model (no architecture / config_dict)")
    return {"architecture": model.architecture, "config": model.config_dict()}


def build(description: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of a registered architecture from `describe`'s dict."""
    name = description["architecture"]
    if name not in ARCHITECTURES:
        raise KeyError(f"architecture {name!r} is not registered (known: {', '.join(sorted(ARCHITECTURES))}); "
                       "a model of a user task is rebuilt by that task: pass task=")
    return ARCHITECTURES[name](dict(description["config"]))
