"""Search-space YAML (plus overrides) -> a validated `SweepConfig`.

Errors are `ConfigError`s: one line naming the file (or `--set`, or the flag), the key, the bad value and the
fix. The parameters a task owns are checked by the task (`bind`, which the caller passes: `orchestrator.
load_config` binds the task the YAML names, or the one you give), inside the same error attribution.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from orchestrator.config.params import CORE_PARAMS, SPEC_KEYS, as_float, build_params, build_points
from orchestrator.config.schema import (
    ConstraintsConfig,
    DistillConfig,
    EarlyStoppingConfig,
    FidelityConfig,
    ExportConfig,
    MeasureConfig,
    ReferencePointConfig,
    ResourcesConfig,
    SweepConfig,
    TaskConfig,
    TeacherConfig,
)
from orchestrator.core.errors import ConfigError, did_you_mean, one_line, show
from orchestrator.techniques.base import STAGES, TECHNIQUES
from orchestrator.techniques.pipeline import Pipeline

Bind = Callable[[SweepConfig], SweepConfig]  # the task's part of loading: its parameters checked, its name set


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    set_source: str = "override",
    flags: Mapping[str, str] | None = None,
    bind: Bind | None = None,
) -> SweepConfig:
    """Read a search-space YAML, apply dotted-key overrides, and validate everything.

    Args:
        path: the YAML file; None starts from the defaults.
        overrides: ``{"distill.steps": 10, "params.bits": 4}``; nested dicts are flattened to dotted keys.
        set_source: how errors name the overrides (the CLI says ``--set``).
        flags: how errors name the overrides of keys given by a flag of their own (``{"trials": "--trials"}``).
        bind: the task's part (`Task.bind`): without it, parameters beyond the core's are kept as given,
            typed by their values, for a task to check.

    Example:
        >>> cfg = load_config(None, overrides={"trials": 3, "params.bits": {"choices": [4, 8]}})
        >>> cfg.trials, cfg.params["bits"]
        (3, Choice(choices=(4, 8)))
    """
    source = str(path) if path is not None else "<defaults>"
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(Path(path))
        raw.setdefault("name", Path(path).stem)
    flat = _flatten(overrides or {})
    names = {key: (flags or {}).get(key) or f"{set_source} {key}" for key in flat}
    for key, value in flat.items():
        _set_dotted(raw, key, value, names[key])
    try:
        cfg = _build_sweep(raw, source)
        return bind(cfg) if bind is not None else cfg
    except ConfigError as e:
        raise _reattribute(e, source, names) from None


def _reattribute(error: ConfigError, source: str, names: Mapping[str, str]) -> ConfigError:
    """Name the override (``--set distill.steps``, ``--trials``), not the file, when the bad value came from one."""
    head, sep, rest = str(error).partition(": `")
    key = rest.split("`", 1)[0]
    for item, name in names.items():
        if head == source and sep and (key == item or key.startswith(item + ".") or item.startswith(key + ".")):
            return ConfigError(f"{name}: `{rest}")
    return error


def parse_set(item: str) -> tuple[str, Any]:
    """Parse a CLI ``key.path=value``; the value is YAML (``4``, ``adamw``, ``{choices: [2, 4]}``)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {show(item)}: expected key.path=value, e.g. --set distill.steps=100")
    try:
        value = yaml.load(text, Loader=_StrictLoader) if text.strip() else None  # noqa: S506 (a SafeLoader)
    except ConfigError as e:
        raise ConfigError(f"--set {show(item)}: {e}") from None
    except (yaml.YAMLError, RecursionError) as e:
        raise ConfigError(f"--set {show(item)}: the value is not valid YAML ({one_line(e)})") from None
    return key.strip(), value


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (the plain loader keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise ConfigError(f"line {key_node.start_mark.line + 1}: key `{str(key)[:60]}` is given twice in one mapping "
                                  f"(first on line {seen[key]}); keep one")
            if isinstance(key, (str, int, float, bool)):
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass the path of a search-space YAML (see search_spaces/)")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"{path}: not readable as YAML: {one_line(e)}; fix the syntax there") from None
    if raw is None:
        raise ConfigError(f"{path}: the file holds no keys (it is empty or only comments); a search space needs at least "
                          "`trials` and `params`, e.g. copy search_spaces/quickstart.yaml")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (name, trials, params, ...), got a "
                          f"{type(raw).__name__}: {show(raw)}")
    return raw


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"distill": {"steps": 3}} -> {"distill.steps": 3}; a param's spec dict and `sampler_options` stay whole."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and not dotted.startswith("params.") and dotted not in ("sampler_options", "task.options"):
            out.update(_flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out


def _set_dotted(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    _check_known_key(parts, where)
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}  # a fixed param becoming a range, or a section the YAML left out
        node = node[part]
    node[parts[-1]] = value


def _check_known_key(parts: list[str], where: str) -> None:
    """An override must name a real key, so that its error says where it came from (a parameter's name is
    checked by its task when it binds)."""
    top = sorted(f.name for f in dataclasses.fields(SweepConfig) if f.name != "source")
    dotted = ".".join(parts)
    if parts[0] not in top:
        raise ConfigError(f"{where}: `{parts[0]}` is not a known key{did_you_mean(parts[0], top)}; known keys: {', '.join(top)}")
    if parts[0] in _SECTIONS:
        known = [f.name for f in dataclasses.fields(_SECTIONS[parts[0]])]
        if len(parts) != 2 or parts[1] not in known:
            hint = did_you_mean(parts[1], known) if len(parts) > 1 else ""
            raise ConfigError(f"{where}: `{dotted}` is not a known key{hint}; known keys there: {', '.join(known)}")
    elif parts[0] == "params":
        if len(parts) < 2 or not parts[1]:
            raise ConfigError(f"{where}: `{dotted}` names no parameter; use params.NAME, e.g. params.bits")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in SPEC_KEYS):
            raise ConfigError(f"{where}: `{dotted}` is not a known key{did_you_mean(parts[-1], SPEC_KEYS)}; "
                              "use params.NAME or params.NAME.low/high/log/step/choices")
    elif parts[0] in _OBJECTIVE_SECTIONS:
        if len(parts) > 2:
            raise ConfigError(f"{where}: `{dotted}` is not a known key; use {parts[0]}.NAME, NAME keyed by an objective")
    elif parts[0] == "sampler_options":
        if len(parts) > 2:
            raise ConfigError(f"{where}: `{dotted}` is not a known key; use sampler_options.ARGUMENT")
    elif len(parts) != 1:
        raise ConfigError(f"{where}: `{dotted}` is not a known key; `{parts[0]}` takes a plain value")


_SECTIONS = {
    "task": TaskConfig,
    "teacher": TeacherConfig,
    "distill": DistillConfig,
    "resources": ResourcesConfig,
    "measure": MeasureConfig,
    "early_stopping": EarlyStoppingConfig,
    "fidelity": FidelityConfig,
    "export": ExportConfig,
}


def _build_sweep(raw: dict[str, Any], source: str) -> SweepConfig:
    raw = dict(raw)
    params_raw = raw.pop("params", None) or {}
    points_raw = raw.pop("initial_points", None) or []
    options_raw = raw.pop("sampler_options", None) or {}
    kwargs: dict[str, Any] = {"pipeline": _build_pipeline(raw.pop("pipeline", None), source)}
    for name, cls in _OBJECTIVE_SECTIONS.items():
        kwargs[name] = _build_objective_section(cls, raw.pop(name, None), source, name)
    objectives = raw.pop("objectives", None)
    if objectives is not None:
        if not isinstance(objectives, list):
            raise ConfigError(f"{source}: `objectives` must be a list of objective names, e.g. [accuracy, size_mb], got {show(objectives)}")
        kwargs["objectives"] = tuple(objectives)
    for name, cls in _SECTIONS.items():
        section = raw.pop(name, None) or {}
        layer_map = None
        if name == "distill" and isinstance(section, dict) and "layer_map" in section:
            section = dict(section)
            layer_map = _build_layer_map(section.pop("layer_map"), source)
        kwargs[name] = _build(cls, section, source, f"{name}.")
        if layer_map is not None:
            kwargs[name] = dataclasses.replace(kwargs[name], layer_map=layer_map)
    top = _typed(SweepConfig, raw, source, "", exclude=set(_SECTIONS) | set(_OBJECTIVE_SECTIONS) | {
        "params", "initial_points", "sampler_options", "pipeline", "source", "objectives"})
    if not isinstance(options_raw, dict):
        raise ConfigError(f"{source}: `sampler_options` must be a mapping of Optuna sampler arguments, got {show(options_raw)}")
    if not isinstance(params_raw, dict):
        raise ConfigError(f"{source}: `params` must be a mapping of parameter names to values or ranges, got {show(params_raw)}")
    params = build_params(params_raw, source, rules=CORE_PARAMS, open=True)
    points = build_points(points_raw, params, source)
    return SweepConfig(**top, **kwargs, params=params, initial_points=points, sampler_options=options_raw, source=source)


_OBJECTIVE_SECTIONS = {"constraints": ConstraintsConfig, "reference_point": ReferencePointConfig}


def _build_objective_section(cls: type, raw: Any, source: str, name: str) -> Any:
    """`constraints` / `reference_point`: a flat mapping keyed by objective names; its own checks, with the
    file named first."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{name}` must be a mapping, e.g. {{max_size_mb: 5}}, got {show(raw)}")
    values = {}
    for key, value in raw.items():
        number = as_float(value) if value is not None else None
        values[key] = number if number is not None and not isinstance(value, bool) else value
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{source}: `{name}.{str(e).split('`', 2)[1]}`{str(e).split('`', 2)[2]}") from None


_PIPELINE_EXAMPLE = "e.g. [distill, {prune: {method: magnitude}}, {quantize: {method: affine}}]"


def _build_pipeline(raw: Any, source: str) -> Pipeline:
    """`pipeline`: a list of stage names or one-key mappings {stage: {method: ..., options}}, in order."""
    if raw is None:
        return Pipeline()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: `pipeline` must be a list of stages, {_PIPELINE_EXAMPLE}; got {show(raw)}")
    stages: dict[str, Any] = {"distill": False, "prune": None, "quantize": None}
    seen: list[str] = []
    for i, item in enumerate(raw):
        where = f"pipeline[{i}]"
        if isinstance(item, str):
            name, options = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, options = next(iter(item.items()))
            options = {} if options is None else options
        else:
            raise ConfigError(f"{source}: `{where}` must be a stage name or a one-key mapping {{stage: {{options}}}}, got {show(item)}")
        if name not in STAGES:
            raise ConfigError(f"{source}: `{where}` names stage {show(name)}{did_you_mean(name, STAGES)}; the stages are {', '.join(STAGES)}")
        if name in seen:
            raise ConfigError(f"{source}: `{where}` lists stage {name} a second time; list each stage once")
        if seen and STAGES.index(name) < STAGES.index(seen[-1]):
            raise ConfigError(
                f"{source}: `{where}` puts {name} after {seen[-1]}; stages run in the order {', '.join(STAGES)} "
                "(QAT and gradual pruning run during distillation: set their `mode`/`schedule`)"
            )
        seen.append(name)
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: `{where}.{name}` must be a mapping of options, got {show(options)}")
        if name == "distill":
            if options:
                raise ConfigError(f"{source}: `{where}.distill` takes no options here; set them in the `distill:` section")
            stages["distill"] = True
            continue
        table = TECHNIQUES[name]
        options = dict(options)
        method = options.pop("method", "magnitude" if name == "prune" else "affine")
        if method not in table:
            raise ConfigError(f"{source}: `{where}.{name}.method` must be one of {', '.join(table)}, got {show(method)}"
                              f"{did_you_mean(method, table)}")
        stages[name] = _build(table[method], options, source, f"{where}.{name}.")
    return Pipeline(**stages)


def _build_layer_map(raw: Any, source: str) -> tuple[tuple[int, int], ...] | None:
    if raw is None:
        return None
    ok = isinstance(raw, list) and raw and all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in p)
        for p in raw
    )
    if not ok:
        raise ConfigError(f"{source}: `distill.layer_map` must be a list of [student layer, teacher layer] pairs of "
                          f"0-based integers, e.g. [[0, 1], [1, 3]], got {show(raw)}")
    return tuple((a, b) for a, b in raw)


def _build(cls: type, raw: Any, source: str, prefix: str, exclude: Iterable[str] = ()) -> Any:
    return cls(**_typed(cls, raw, source, prefix, exclude))


def _typed(cls: type, raw: Any, source: str, prefix: str, exclude: Iterable[str] = ()) -> dict[str, Any]:
    """`raw`'s keys checked against `cls`'s fields, each value typed and checked: the constructor's kwargs."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{prefix.rstrip('.')}` must be a mapping of keys, got {show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in set(exclude)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            known = fields if prefix else [f.name for f in dataclasses.fields(cls) if f.name != "source"]  # top: sections too
            raise ConfigError(f"{source}: `{prefix}{key}` is not a known key{did_you_mean(key, known)}; "
                              f"known keys {'there' if prefix else 'at the top level'}: {', '.join(known)}")
        f = fields[key]
        value = _coerce(value, hints[key], source, f"{prefix}{key}")
        check = f.metadata.get("check")
        if check and not check[0](value):
            raise ConfigError(f"{source}: `{prefix}{key}` must be {check[1]}, got {show(value)}")
        kwargs[key] = value
    return kwargs


def _coerce(value: Any, hint: Any, source: str, key: str) -> Any:
    """Check `value` against a field's type hint; YAML's '1e-3' (a string in YAML 1.1) counts as a float."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _coerce(value, inner[0], source, key)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{source}: `{key}` must be one of {', '.join(map(str, allowed))}, got {show(value)}"
                              f"{did_you_mean(value, allowed)}")
        return value
    if origin is tuple and typing.get_args(hint)[1:] == (Ellipsis,):  # a YAML list of one type
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: `{key}` must be a list, got {show(value)}")
        return tuple(_coerce(v, typing.get_args(hint)[0], source, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is Mapping:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: `{key}` must be a mapping, got {show(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: `{key}` must be true or false, got {show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: `{key}` must be an integer, got {show(value)}")
        return value
    if hint is float:
        number = as_float(value)
        if number is None:
            raise ConfigError(f"{source}: `{key}` must be a number, got {show(value)}")
        return number
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: `{key}` must be a non-empty string, got {show(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in this module, not user input
