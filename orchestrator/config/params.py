"""The `params` section: each searched parameter as a fixed value, a choice or a range, typed and checked
against its rule, and `initial_points`.

The core declares the parameters of compression and distillation (`CORE_PARAMS`); a task declares its
students' shape parameters (`Task.params`: layers, width and heads for the built-in GPT; whatever your
student builder takes for a task of your own). `build_params` checks a section against the rules it is
given; a name without a rule is the task's own when `open` (its type is read from its values), and an
error otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from orchestrator.core.errors import ConfigError, did_you_mean, show
from orchestrator.core.space import Choice, Fixed, ParamRule, ParamSpec, Range, param_values

BITS = (2, 3, 4, 5, 6, 7, 8, 16, 32)  # integer levels 2..8; 16 and 32 store floats (`techniques.base.FLOAT_BITS`)
OPTIMIZERS = ("adamw", "adam", "rmsprop", "sgd", "adagrad")

# name -> rule: the parameters every sweep has, whatever its task. These names are the MLflow param names.
CORE_PARAMS: dict[str, ParamRule] = {
    "beta": ParamRule(float, lambda v: v >= 0, "a number >= 0", 0.0, "β: weight of the hidden-state term (0: logits only)"),
    "lambda": ParamRule(float, lambda v: v >= 0, "a number >= 0", 0.5, "λ: weight of the hard-label term"),
    "temperature": ParamRule(float, lambda v: v > 0, "a number > 0", 2.0, "T: softens both distributions"),
    "sparsity": ParamRule(float, lambda v: 0 <= v < 1, "a number in [0, 1)", 0.0, "fraction of weights (or units) pruned"),
    "bits": ParamRule(int, lambda v: v in BITS, "one of 2..8, 16 or 32", 32, "bit width of the quantized weights"),
    "effective_bits": ParamRule(float, lambda v: 1 <= v <= 32, "a number in [1, 32]", None,
                                "bits per quantized weight, scales and zero points included (quantize `allocation: sensitivity`)"),
    "optimizer": ParamRule(str, lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}", "adamw", "the student's optimizer"),
    "lr": ParamRule(float, lambda v: v > 0, "a number > 0", 1e-3, "its peak learning rate"),
    "weight_decay": ParamRule(float, lambda v: v >= 0, "a number >= 0", 0.0, "its weight decay"),
    "group_size": ParamRule(int, lambda v: v >= 2, "an integer >= 2", 64, "inputs per quantization group (granularity group)"),
    "steps": ParamRule(int, lambda v: v >= 1, "an integer >= 1", None, "distillation steps (not given: `distill.steps`)"),
}
SPEC_KEYS = ("choices", "low", "high", "log", "step")


def as_float(value: Any) -> float | None:
    """A finite number from an int, a float or a numeric string (YAML 1.1 reads '1e-3' as a string)."""
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


def build_params(raw: Mapping[str, Any], source: str, *, rules: Mapping[str, ParamRule], open: bool) -> dict[str, ParamSpec]:
    """The searched parameters: each name of `raw` checked against its rule (with `open`, a name without one
    is the task's own: any integer, number or string values), then every ruled name not given at its default.
    Ruled names come first, in the rules' order."""
    params: dict[str, ParamSpec] = {}
    for name, value in raw.items():
        if name not in rules and not open:
            known = list(rules)
            raise ConfigError(f"{source}: `params.{name}` is not a searchable parameter{did_you_mean(name, known)}; "
                              f"known: {', '.join(known)}")
        params[name] = build_spec(name, value, source, rules.get(name) or own_rule(value))
    for name, rule in rules.items():
        params.setdefault(name, Fixed(rule.default))
    return {**{name: params.pop(name) for name in rules}, **params}


def own_rule(value: Any) -> ParamRule:
    """The rule of a task's own parameter, from its values: integers, numbers or strings."""
    values = value.get("choices", [value.get("low"), value.get("high")]) if isinstance(value, dict) else [value]
    values = [v for v in values if v is not None] if isinstance(values, list) else [values]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        kind: type = int
    elif values and all(as_float(v) is not None for v in values):
        kind = float
    else:
        kind = str
    return ParamRule(kind, lambda v: True, "any value", None)


def _one(rule: ParamRule, v: Any, source: str, where: str) -> Any:
    """One value of a parameter, typed and checked against its rule."""
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


def build_spec(name: str, value: Any, source: str, rule: ParamRule) -> ParamSpec:
    """A plain value is fixed, {choices: [...]} is categorical, {low, high[, log][, step]} is a range."""
    key = f"params.{name}"
    if value is None and rule.default is None:  # unset, as its default is (e.g. `effective_bits` without an allocation)
        return Fixed(None)
    if not isinstance(value, dict):
        return Fixed(_one(rule, value, source, key))
    keys = set(value)
    if "choices" in keys:
        if keys != {"choices"}:
            raise ConfigError(f"{source}: `{key}` mixes `choices` with {sorted(keys - {'choices'})}; give either choices or low/high")
        choices = value["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{source}: `{key}.choices` must be a non-empty list, got {show(choices)}")
        items = tuple(_one(rule, c, source, f"{key}.choices") for c in choices)
        if len(set(items)) != len(items):
            raise ConfigError(f"{source}: `{key}.choices` has duplicates: {list(choices)}; list each value once")
        return Choice(items)
    return _build_range(name, value, source, rule)


def _build_range(name: str, value: dict[str, Any], source: str, rule: ParamRule) -> Range:
    key, keys = f"params.{name}", set(value)
    unknown = keys - {"low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{source}: `{key}.{sorted(unknown)[0]}` is not a known key"
                          f"{did_you_mean(sorted(unknown)[0], SPEC_KEYS)}; use choices, or low/high with optional log/step")
    if not {"low", "high"} <= keys:
        raise ConfigError(f"{source}: `{key}` needs both `low` and `high` (or `choices`), got {show(value)}")
    if rule.kind is str:
        raise ConfigError(f"{source}: `{key}` is categorical; give `choices: [...]`, not a range")
    low, high = _one(rule, value["low"], source, f"{key}.low"), _one(rule, value["high"], source, f"{key}.high")
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


def spec_to_raw(spec: ParamSpec) -> Any:
    """The YAML form of a spec (what `build_spec` takes back)."""
    if isinstance(spec, Fixed):
        return spec.value
    if isinstance(spec, Choice):
        return {"choices": list(spec.choices)}
    raw: dict[str, Any] = {"low": spec.low, "high": spec.high}
    if spec.log:
        raw["log"] = True
    if spec.step is not None:
        raw["step"] = spec.step
    return raw


def build_points(raw: Any, params: Mapping[str, ParamSpec], source: str,
                 rules: Mapping[str, ParamRule] = CORE_PARAMS) -> tuple[dict[str, Any], ...]:
    """`initial_points`: a list of {searched param: value}; each value must be one the param can take."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: `initial_points` must be a list of mappings from searched parameters to values, got {show(raw)}")
    return tuple(_build_point(i, point, params, source, rules) for i, point in enumerate(raw))


def _build_point(i: int, point: Any, params: Mapping[str, ParamSpec], source: str, rules: Mapping[str, ParamRule]) -> dict[str, Any]:
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
            value = build_spec(name, value, source, rules.get(name) or own_rule(value)).value  # typed as a fixed param
        except ConfigError as e:
            raise ConfigError(str(e).replace(f"`params.{name}`", f"`{where}.{name}`")) from None
        values = param_values(spec)
        if not (value in values if values is not None else spec.low <= value <= spec.high):
            allowed = values if values is not None else f"{spec.low}..{spec.high}"
            raise ConfigError(f"{source}: `{where}.{name}` = {show(value)} is not a value `params.{name}` can take ({allowed})")
        clean[name] = value
    return clean
