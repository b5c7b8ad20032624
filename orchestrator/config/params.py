"""The `params` section: each searched parameter as a fixed value, a choice or a range, typed and checked
against its rule (a task's own parameters take their type from their values), and `initial_points`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orchestrator.config.rules import param_values
from orchestrator.config.schema import PARAM_NAMES, PARAM_RULES, Choice, ConfigError, Fixed, ParamRule, ParamSpec, Range, did_you_mean, show


def as_float(value: Any) -> float | None:
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


def build_params(raw: dict[str, Any], source: str, *, own_params: bool = False) -> dict[str, ParamSpec]:
    """The searched parameters; with `own_params`, names beyond `PARAM_NAMES` are the task's own (any
    integer, number or string values)."""
    params: dict[str, ParamSpec] = {}
    for name, value in raw.items():
        if name not in PARAM_RULES and not own_params:
            raise ConfigError(f"{source}: `params.{name}` is not a searchable parameter{did_you_mean(name, PARAM_NAMES)}; "
                              f"known: {', '.join(PARAM_NAMES)}")
        params[name] = _build_spec(name, value, source)
    for name, rule in PARAM_RULES.items():
        params.setdefault(name, Fixed(rule.default))
    return {**{name: params.pop(name) for name in PARAM_NAMES}, **params}


def _own_rule(value: Any) -> ParamRule:
    """The rule of a task's own parameter, from its values: integers, numbers or strings."""
    values = value.get("choices", [value.get("low"), value.get("high")]) if isinstance(value, dict) else [value]
    values = [v for v in values if v is not None] if isinstance(values, list) else [values]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        kind = int
    elif values and all(as_float(v) is not None for v in values):
        kind = float
    else:
        kind = str
    return ParamRule(kind, lambda v: True, "any value", None)


def _build_spec(name: str, value: Any, source: str) -> ParamSpec:
    rule = PARAM_RULES.get(name) or _own_rule(value)
    key = f"params.{name}"

    def one(v: Any, where: str) -> Any:
        if rule.kind is float:
            number = as_float(v)
            if number is None:
                raise ConfigError(f"{source}: `{where}` must be a number, got {show(v)}")
            v = number
        elif rule.kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{source}: `{where}` must be an integer, got {show(v)}")
        elif rule.kind is str and not isinstance(v, str):
            raise ConfigError(f"{source}: `{where}` must be a string, got {show(v)}")
        if not rule.ok(v):
            raise ConfigError(f"{source}: `{where}` must be {rule.need}, got {show(v)}")
        return v

    if not isinstance(value, dict):
        return Fixed(one(value, key))
    keys = set(value)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{source}: `{key}` mixes `choices` with {sorted(keys - {'choices'})}; give either choices or low/high")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{source}: `{key}.choices` must be a non-empty list, got {show(choices)}")
        items = tuple(one(c, f"{key}.choices") for c in choices)
        if len(set(items)) != len(items):
            raise ConfigError(f"{source}: `{key}.choices` has duplicates: {list(choices)}; list each value once")
        return Choice(items)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{source}: `{key}.{sorted(unknown)[0]}` is not a known key"
                          f"{did_you_mean(sorted(unknown)[0], ('choices', 'low', 'high', 'log', 'step'))}; use choices, or low/high with optional log/step")
    if not {"low", "high"} <= keys:
        raise ConfigError(f"{source}: `{key}` needs both `low` and `high` (or `choices`), got {show(value)}")
    if rule.kind is str:
        raise ConfigError(f"{source}: `{key}` is categorical; give `choices: [...]`, not a range")
    low, high = one(value["low"], f"{key}.low"), one(value["high"], f"{key}.high")
    if low > high:
        raise ConfigError(f"{source}: `{key}.low` ({low}) must be <= `{key}.high` ({high})")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: `{key}.log` must be true or false, got {show(log)}")
    if log and low <= 0:
        raise ConfigError(f"{source}: `{key}.low` must be > 0 for a log range, got {low}")
    step = value.get("step")
    if step is not None:
        step_num = as_float(step)
        if step_num is None or step_num <= 0 or (rule.kind is int and step_num != int(step_num)):
            raise ConfigError(f"{source}: `{key}.step` must be a positive {'integer' if rule.kind is int else 'number'}, got {show(step)}")
        if log:
            raise ConfigError(f"{source}: `{key}` cannot have both `log` and `step`; drop one")
        step = int(step_num) if rule.kind is int else step_num
    if name == "bits" and not (low >= 2 and high <= 8):
        raise ConfigError(f"{source}: `{key}` as a range must lie within 2..8; use choices to add 16 or 32, got {low}..{high}")
    return Range(low, high, log=log, step=step, integer=rule.kind is int)


def build_points(raw: Any, params: Mapping[str, ParamSpec], source: str) -> tuple[dict[str, Any], ...]:
    """`initial_points`: a list of {searched param: value}; each value must be one the param can take."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: `initial_points` must be a list of mappings from searched parameters to values, got {show(raw)}")
    points = []
    for i, point in enumerate(raw):
        where = f"initial_points[{i}]"
        if not isinstance(point, dict) or not point:
            raise ConfigError(f"{source}: `{where}` must be a mapping from searched parameters to values, got {show(point)}")
        clean = {}
        for name, value in point.items():
            spec = params.get(name)
            if spec is None or isinstance(spec, Fixed):
                searched = [n for n, s in params.items() if not isinstance(s, Fixed)]
                raise ConfigError(f"{source}: `{where}.{name}` is not a searched parameter; searched: {', '.join(searched) or 'none'}")
            if isinstance(value, (dict, list)):
                raise ConfigError(f"{source}: `{where}.{name}` must be one value, got {show(value)}")
            try:
                value = _build_spec(name, value, source).value  # type checks and coercion, as for a fixed param
            except ConfigError as e:
                raise ConfigError(str(e).replace(f"`params.{name}`", f"`{where}.{name}`")) from None
            values = param_values(spec)
            ok = value in values if values is not None else spec.low <= value <= spec.high
            if not ok:
                allowed = values if values is not None else f"{spec.low}..{spec.high}"
                raise ConfigError(f"{source}: `{where}.{name}` = {show(value)} is not a value `params.{name}` can take ({allowed})")
            clean[name] = value
        points.append(clean)
    return tuple(points)
