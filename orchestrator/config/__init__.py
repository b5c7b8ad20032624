"""Configuration: `schema` says what a sweep is made of, `load` turns YAML into it and checks everything."""

from orchestrator.config.load import load_config, param_values, parse_set
from orchestrator.config.schema import (
    OPTIMIZERS,
    PARAM_NAMES,
    Choice,
    ConfigError,
    ConstraintsConfig,
    EarlyStoppingConfig,
    Fixed,
    ParamSpec,
    Range,
    ReferencePointConfig,
    SweepConfig,
)

__all__ = [
    "OPTIMIZERS",
    "PARAM_NAMES",
    "Choice",
    "ConfigError",
    "ConstraintsConfig",
    "EarlyStoppingConfig",
    "Fixed",
    "ParamSpec",
    "Range",
    "ReferencePointConfig",
    "SweepConfig",
    "load_config",
    "param_values",
    "parse_set",
]
