"""How a sweep's parts must fit together: the objectives, the pipeline and the parameters it uses, the
sampler and its options, resources, the stores' URIs. `SweepConfig` runs `check_sweep` whenever it is built,
from YAML or from Python; each technique checks its own part (`Technique.check`), and a task checks its
own when it binds the config (`Task.bind`, `Task.check`).
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.config.params import CORE_PARAMS
from orchestrator.config.samplers import SAMPLERS, make_sampler
from orchestrator.core.errors import ConfigError, did_you_mean, show
from orchestrator.core.objectives import OBJECTIVES, describe
from orchestrator.core.space import Fixed, param_values, searched_grid
from orchestrator.io.storage import SCHEMES, is_uri
from orchestrator.runtimes import FORMATS, RUNTIMES
from orchestrator.techniques.base import STAGE_PARAMS

if TYPE_CHECKING:
    from orchestrator.config.schema import SweepConfig

_TRACKING_SCHEMES = ("sqlite", "file", "http", "https", "databricks", "postgresql", "mysql", "mssql")
_STUDY_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")
_OWNED_OPTIONS = {"seed": "`seed` or `sampler_seed`", "population_size": "`population_size`",
                  "constraints_func": "`constraints`", "search_space": "`params`"}


def check_sweep(cfg: SweepConfig) -> None:
    """Every rule that relates one part of a finished config to another; `ConfigError` on the first broken."""
    _check_objectives(cfg)
    _check_pipeline(cfg)
    _check_stores(cfg)
    _check_resources(cfg)
    _check_sampler(cfg)
    _check_runtimes(cfg)
    if cfg.task.chars is not None and cfg.task.chars * 0.05 < cfg.task.context + 1:
        raise ConfigError(f"{cfg.source}: `task.chars` = {cfg.task.chars} leaves a test split shorter than `task.context`; raise it")


def given_params(cfg: SweepConfig) -> set[str]:
    """The core parameters set away from their defaults."""
    defaults = {name: Fixed(rule.default) for name, rule in CORE_PARAMS.items()} | {"steps": Fixed(cfg.distill.steps)}
    return {name for name, spec in cfg.params.items() if name in defaults and spec != defaults[name]}


def check_storage_value(where: str, named: str, source: str) -> None:
    """A storage location must be a directory path or a URI of a filesystem this machine reaches."""
    if is_uri(where):
        scheme = where.split("://", 1)[0]
        if scheme not in SCHEMES:
            raise ConfigError(f"{source}: {named} {show(where)} has scheme {scheme}://, which no filesystem here reaches; "
                              f"use one of {', '.join(s + '://' for s in SCHEMES)} or a directory path")
    elif Path(where).expanduser().exists() and not Path(where).expanduser().is_dir():
        raise ConfigError(f"{source}: {named} {show(where)} is a file; give a directory (it is created if missing)")


def _check_objectives(cfg: SweepConfig) -> None:
    """2 to 4 registered objectives, each once; a reference point only for objectives of the sweep; a
    measurement target that Ray can name."""
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
    if cfg.measure.replicas > 1 and target == "local":
        raise ConfigError(f"{source}: `measure.replicas` is {cfg.measure.replicas}, one measurement actor per target node, "
                          "but `measure.target` is local (one node); give a node type a custom resource (e.g. latency_target: 1) "
                          "and set measure.target to its name, or set replicas to 1")
    if cfg.measure.cpus is not None and cfg.measure.isolation != "reserve":
        raise ConfigError(f"{source}: `measure.cpus` is {cfg.measure.cpus:g}, CPUs the measurement service would hold for the "
                          f"whole sweep, but `measure.isolation` is {cfg.measure.isolation}, which holds none; set "
                          "`measure.isolation: reserve` or drop `measure.cpus`")


def _check_pipeline(cfg: SweepConfig) -> None:
    """Parameters set away from their defaults must matter to the pipeline; each technique checks the rest."""
    pipe, source, given = cfg.pipeline, cfg.source, given_params(cfg)
    if not pipe.distill:
        if "steps" in given:
            raise ConfigError(f"{source}: `params.steps` applies to students, but `pipeline` has no distill stage, so the model "
                              "compressed is the teacher (`teacher.*`); remove the param or add distill to the pipeline")
        if cfg.early_stopping.enabled:
            raise ConfigError(f"{source}: `early_stopping.enabled` stops distillation, and `pipeline` has no distill stage; disable it")
        if cfg.fidelity.enabled:
            raise ConfigError(f"{source}: `fidelity.enabled` stops distillation at its rungs, and `pipeline` has no distill stage; disable it")
    for stage, names in STAGE_PARAMS.items():
        for name in names:
            if name in given and getattr(pipe, stage) is None:
                raise ConfigError(f"{source}: `params.{name}` is searched but `pipeline` has no {stage} stage; remove it or add {stage}")
    for technique in pipe.techniques:
        technique.check(source=source, given=given, distill=pipe.distill)
    if pipe.quantize is not None and pipe.quantize.allocation == "sensitivity":
        _check_budget(cfg)
    if cfg.fanout > 1:
        compression = [n for n in cfg.searched if n in pipe.compression_params]
        if not pipe.distill or not compression:
            why = "the pipeline has no distill stage" if not pipe.distill else \
                f"no searched param is read only after distillation (searched: {', '.join(cfg.searched) or 'none'})"
            raise ConfigError(f"{source}: `fanout` is {cfg.fanout}: trials that compress one distilled student other ways, but {why}; "
                              "search a one-shot technique's param (e.g. `params.sparsity`, `params.bits`) or set fanout to 1")


def _check_budget(cfg: SweepConfig) -> None:
    """A mixed allocation's `effective_bits` must lie within its candidate widths (scales add a little on top of
    the narrowest, which a budget at its very bottom cannot pay: that trial fails naming it)."""
    spec, widths = cfg.params["effective_bits"], sorted(cfg.pipeline.quantize.candidate_bits)
    values = [v for v in (param_values(spec) or [spec.low, spec.high]) if v is not None]
    for v in values:
        if not widths[0] < v <= widths[-1]:
            raise ConfigError(f"{cfg.source}: `params.effective_bits` can be {v:g}, outside what `quantize.candidate_bits` "
                              f"{list(widths)} can allocate (above {widths[0]}, at most {widths[-1]}); narrow the range or change "
                              "the candidates")


def _check_stores(cfg: SweepConfig) -> None:
    if cfg.tracking_uri is not None and cfg.tracking_uri.split("://", 1)[0].split("+", 1)[0] not in _TRACKING_SCHEMES:
        raise ConfigError(f"{cfg.source}: `tracking_uri` must be an MLflow URI such as sqlite:///mlflow.db or "
                          f"http://127.0.0.1:5000, got {show(cfg.tracking_uri)}")
    if cfg.storage is not None:
        check_storage_value(cfg.storage, "`storage`", cfg.source)
    study = cfg.study_storage
    if study is not None and study.split("://", 1)[0].split("+", 1)[0] not in _STUDY_SCHEMES:
        raise ConfigError(f"{cfg.source}: `study_storage` must be a database URL Optuna reaches, such as "
                          f"postgresql://user:pw@host/db or mysql+pymysql://..., got {show(study)}")


def _check_resources(cfg: SweepConfig) -> None:
    if cfg.resources.launcher == "in_trial" and cfg.resources.num_workers != 1:
        raise ConfigError(f"{cfg.source}: `resources.launcher` in_trial runs one worker, but `resources.num_workers` is "
                          f"{cfg.resources.num_workers}; use launcher ray_train (or auto) for DDP")
    if cfg.early_stopping.enabled and not cfg.distill_in_trial:
        raise ConfigError(f"{cfg.source}: `early_stopping.enabled` needs distillation in the trial's process "
                          "(`resources.num_workers` 1, `resources.launcher` auto or in_trial); disable it for DDP sweeps")
    if cfg.fidelity.enabled and not cfg.distill_in_trial:
        raise ConfigError(f"{cfg.source}: `fidelity.enabled` needs distillation in the trial's process "
                          "(`resources.num_workers` 1, `resources.launcher` auto or in_trial); disable it for DDP sweeps")


def _check_sampler(cfg: SweepConfig) -> None:
    source = cfg.source
    if cfg.population_size is not None and cfg.sampler != "nsga2":
        raise ConfigError(f"{source}: `population_size` applies to sampler nsga2 only, but `sampler` is {cfg.sampler}; drop "
                          "it or use nsga2")
    if cfg.sampler == "grid":
        continuous = [name for name, spec in cfg.params.items() if param_values(spec) is None]
        if continuous:
            raise ConfigError(f"{source}: sampler grid needs every parameter discrete, but `params.{continuous[0]}` is a "
                              "continuous range; give it `choices` or a `step`")
        size = math.prod(len(param_values(spec)) for spec in cfg.params.values())
        if cfg.trials > size:
            raise ConfigError(f"{source}: `trials` ({cfg.trials}) exceeds the grid's {size} points; set trials to {size} or fewer")
    _check_sampler_options(cfg)


def _check_sampler_options(cfg: SweepConfig) -> None:
    """`sampler_options` must be arguments the chosen Optuna sampler takes, with values it accepts."""
    source, cls = cfg.source, SAMPLERS[cfg.sampler]
    signature = inspect.signature(cls.__init__).parameters
    accepted = sorted(set(signature) - {"self"} - set(_OWNED_OPTIONS))
    for key, value in cfg.sampler_options.items():
        if key in _OWNED_OPTIONS:
            raise ConfigError(f"{source}: `sampler_options.{key}` is set by the sweep; use {_OWNED_OPTIONS[key]} instead")
        if key not in accepted:
            raise ConfigError(f"{source}: `sampler_options.{key}` is not an argument of Optuna's {cls.__name__}; "
                              f"it takes {', '.join(accepted) or 'none'}")
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


def _check_runtimes(cfg: SweepConfig) -> None:
    """Every runtime the sweep exports to (`measure.runtime`'s file, `export.formats`) must run every model and weight
    the searched params can give, unless `export.fallback: dequantized` lets it run some weights as float (where it
    can: ONNX Runtime, not GGUF)."""
    measured = RUNTIMES[cfg.measure.runtime]
    if measured.format is not None and cfg.measure.device == "cuda":
        raise ConfigError(f"{cfg.source}: `measure.runtime` {measured.name} measures on CPU here (its GPU execution and GPU "
                          "peak memory are not wired up yet); set `measure.device: cpu` or `measure.runtime: torch`")
    used = ([measured] if measured.format else []) + [FORMATS[f] for f in cfg.export.formats if FORMATS[f] is not measured]
    for runtime in used:
        if cfg.export.fallback == "dequantized" and runtime.fallback:
            continue
        why = runtime.cannot_run(cfg.pipeline.quantize, {name: param_values(spec) for name, spec in cfg.params.items()},
                                 task=cfg.task.name)
        if why:
            named = f"`measure.runtime` {runtime.name}" if runtime is measured else f"`export.formats` {runtime.format}"
            fallback = (", or set `export.fallback: dequantized` to run such weights as float there (named in each trial's "
                        "tags)") if runtime.fallback else ""
            raise ConfigError(f"{cfg.source}: {named}: {why}{fallback}")
