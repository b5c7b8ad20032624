"""Configuration: `schema` says what a sweep is made of, `load` turns YAML into it (`params` its searched
parameters), `rules` says how its parts must fit together (checked whenever a `SweepConfig` is built),
`techniques` names the methods, `samplers` the Optuna samplers."""

from orchestrator.config.load import load_config, parse_set
from orchestrator.config.rules import param_values, searched_grid
from orchestrator.config.schema import (
    FLOAT_BITS,
    OPTIMIZERS,
    PARAM_NAMES,
    PARAM_RULES,
    Choice,
    ConfigError,
    ConstraintsConfig,
    DistillConfig,
    EarlyStoppingConfig,
    ExportConfig,
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

__all__ = [
    "FLOAT_BITS",
    "OPTIMIZERS",
    "PARAM_NAMES",
    "PARAM_RULES",
    "Choice",
    "ConfigError",
    "ConstraintsConfig",
    "DistillConfig",
    "EarlyStoppingConfig",
    "ExportConfig",
    "Fixed",
    "MeasureConfig",
    "ParamSpec",
    "Range",
    "ReferencePointConfig",
    "ResourcesConfig",
    "SweepConfig",
    "TaskConfig",
    "TeacherConfig",
    "load_config",
    "param_values",
    "parse_set",
    "searched_grid",
]
