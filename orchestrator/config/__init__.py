"""Configuration: YAML -> a frozen, typed `SweepConfig`. `schema` says what a sweep is made of, `load` reads
YAML into it, `params` checks its searched parameters (the core's; a task binds its own), `rules` says how
its parts must fit together (checked whenever a `SweepConfig` is built), `samplers` names the Optuna
samplers."""

from orchestrator.config.load import load_config, parse_set
from orchestrator.config.params import CORE_PARAMS, OPTIMIZERS
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

__all__ = [
    "CORE_PARAMS",
    "OPTIMIZERS",
    "ConstraintsConfig",
    "DistillConfig",
    "EarlyStoppingConfig",
    "FidelityConfig",
    "ExportConfig",
    "MeasureConfig",
    "ReferencePointConfig",
    "ResourcesConfig",
    "SweepConfig",
    "TaskConfig",
    "TeacherConfig",
    "load_config",
    "parse_set",
]
