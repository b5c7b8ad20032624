"""The domain rules of a sweep: how its parts must fit together (the pipeline and the params it uses, the
sampler and its options, resources, the tracking URI). `SweepConfig` runs them when it is built, from YAML
or from Python; `config.load` only parses and types the YAML.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

from orchestrator.config.schema import PARAM_RULES, Choice, ConfigError, Fixed, ParamSpec, Range, SweepConfig, did_you_mean, show  # noqa: F401 (Range: the doctest)
from orchestrator.config.techniques import MagnitudePruning, SemiStructuredPruning
from orchestrator.storage import SCHEMES


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


def searched_grid(params: Mapping[str, ParamSpec]) -> dict[str, list[Any]] | None:
    """Every value of every searched parameter (what a grid sampler enumerates), or None if one is continuous."""
    values = {name: param_values(spec) for name, spec in params.items() if not isinstance(spec, Fixed)}
    return None if any(v is None for v in values.values()) else values


_TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")


_STUDY_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def _check_storage(cfg: SweepConfig) -> None:
    store, source = cfg.store, cfg.source
    named = "`storage`" if cfg.storage else "$ORCHESTRATOR_STORAGE" if os.environ.get("ORCHESTRATOR_STORAGE") else "`storage`"
    if store.remote:
        scheme = store.where.split("://", 1)[0]
        if scheme not in SCHEMES:
            raise ConfigError(f"{source}: {named} {show(store.where)} has scheme {scheme}://, which no filesystem here reaches; "
                              f"use one of {', '.join(s + '://' for s in SCHEMES)} or a directory path")
    elif store.root.exists() and not store.root.is_dir():
        raise ConfigError(f"{source}: {named} {show(store.where)} is a file; give a directory (it is created if missing)")
    study = cfg.study_storage
    if study is not None and study.split("://", 1)[0].split("+", 1)[0] not in _STUDY_SCHEMES:
        raise ConfigError(f"{source}: `study_storage` must be a database URL Optuna reaches, such as "
                          f"postgresql://user:pw@host/db or mysql+pymysql://..., got {show(study)}")


def check_sweep(cfg: SweepConfig) -> None:
    """Every rule that relates one part of a finished config to another; `ConfigError` on the first broken."""
    source = cfg.source
    _check_objectives(cfg)
    defaults = {name: Fixed(rule.default) for name, rule in PARAM_RULES.items()} | {"steps": Fixed(cfg.distill.steps)}
    _check_pipeline(cfg, {name for name, spec in cfg.params.items() if name in PARAM_RULES and spec != defaults[name]})
    if cfg.tracking_uri is not None and cfg.tracking_uri.split("://", 1)[0].split("+", 1)[0] not in _TRACKING_SCHEMES:
        raise ConfigError(
            f"{source}: `tracking_uri` must be an MLflow URI such as sqlite:///mlflow.db or http://127.0.0.1:5000, "
            f"got {show(cfg.tracking_uri)}"
        )
    _check_storage(cfg)
    widths, heads = param_values(cfg.params["width"]), param_values(cfg.params["heads"])
    bad = [(w, h) for w, h in itertools.product(widths or [], heads or []) if w % h]
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
    _check_sampler_options(cfg)
    if cfg.early_stopping.enabled and not cfg.distill_in_trial:
        raise ConfigError(
            f"{source}: `early_stopping.enabled` needs distillation in the trial's process (`resources.num_workers` 1, "
            "`resources.launcher` auto or in_trial); disable it for DDP sweeps"
        )
    if cfg.teacher.width % cfg.teacher.heads:
        raise ConfigError(
            f"{source}: `teacher.width` ({cfg.teacher.width}) must be divisible by `teacher.heads` ({cfg.teacher.heads})"
        )
    if cfg.task.chars is not None and cfg.task.chars * 0.05 < cfg.task.context + 1:
        raise ConfigError(
            f"{source}: `task.chars` = {cfg.task.chars} leaves a test split shorter than `task.context`; raise it"
        )


def _check_objectives(cfg: SweepConfig) -> None:
    """2 to 4 registered objectives, each once; a reference point only for objectives of the sweep; a
    measurement target that Ray can name."""
    from orchestrator.objectives import OBJECTIVES, describe

    source, names = cfg.source, cfg.objectives
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{source}: `objectives` must be a list of objective names, e.g. [accuracy, size_mb], got {show(names)}")
    for name in names:
        if name not in OBJECTIVES:
            raise ConfigError(f"{source}: `objectives` names {show(name)}, which is not a registered objective"
                              f"{did_you_mean(name, OBJECTIVES)}; registered: {describe()}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"{source}: `objectives` lists {twice[0]} more than once; list each objective once")
    if not 2 <= len(names) <= 4:
        raise ConfigError(f"{source}: `objectives` must list 2 to 4 objectives, got {len(names)} ({', '.join(names)})")
    extra = sorted(set(cfg.reference_point.values) - set(names))
    if extra:
        raise ConfigError(f"{source}: `reference_point.{extra[0]}` is not an objective of this sweep ({', '.join(names)}); "
                          "drop it or add it to `objectives`")
    target = cfg.measure.target
    if not target.replace("_", "").replace("-", "").isalnum() or target in ("CPU", "GPU", "memory"):
        raise ConfigError(f"{source}: `measure.target` must be local or the name of a Ray custom resource "
                          f"(letters, digits, _ and -), got {show(target)}")


def _check_pipeline(cfg: SweepConfig, given: set[str]) -> None:
    """Parameters set away from their defaults (`given`) must matter to the pipeline, and each technique
    must have what it needs."""
    pipe, source = cfg.pipeline, cfg.source
    where = "`pipeline`"
    if not pipe.distill:
        for name in ("layers", "width", "heads", "steps"):
            if name in given:
                raise ConfigError(
                    f"{source}: `params.{name}` applies to students, but {where} has no distill stage, so the model "
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
    if pipe.qat and pipe.quantize.method in ("gptq", "codebook"):
        raise ConfigError(f"{source}: quantize method {pipe.quantize.method} is applied after training, not during it: set "
                          "`mode: ptq` (and `recovery_steps: N` to fine-tune the quantized model)")
    if pipe.qat and pipe.quantize.recovery_steps:
        raise ConfigError(f"{source}: quantize `mode: qat` already trains the quantized weights; set `recovery_steps` to 0 "
                          "or use `mode: ptq`")
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


_OWNED_OPTIONS = {"seed": "`seed` or `sampler_seed`", "population_size": "`population_size`",
                  "constraints_func": "`constraints`", "search_space": "`params`"}


def _check_sampler_options(cfg: SweepConfig) -> None:
    """`sampler_options` must be arguments the chosen Optuna sampler takes, with values it accepts."""
    from orchestrator.config.samplers import SAMPLERS, make_sampler  # imports optuna: only when checked

    source = cfg.source
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
            raise ConfigError(f"{source}: `sampler_options.{key}` must be {kind}, got {show(value)}")
    try:
        with warnings.catch_warnings():  # experimental options warn at construction; the sweep builds it again
            warnings.simplefilter("ignore")
            make_sampler(cfg.sampler, seed=cfg.seed, grid=searched_grid(cfg.params), population_size=cfg.population_size,
                         options=cfg.sampler_options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: `sampler_options` {dict(cfg.sampler_options)} are refused by {cls.__name__}: {e}") from None


