"""orchestrator: multi-objective compression sweeps (distill -> prune -> quantize) on Ray, searched by
Optuna, tracked in MLflow.

    >>> import orchestrator
    >>> sorted(orchestrator.__all__)
    ['ConfigError', 'Sweep', 'SweepProgress', 'SweepResult', 'export_pretrained', 'load_config', 'load_model']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.config import ConfigError, load_config

if TYPE_CHECKING:
    from orchestrator.sweep import Sweep, SweepProgress, SweepResult, export_pretrained, load_model

__all__ = ["ConfigError", "Sweep", "SweepProgress", "SweepResult", "export_pretrained", "load_config", "load_model"]

_LAZY = {"Sweep", "SweepProgress", "SweepResult", "export_pretrained", "load_model"}  # importing them brings in Ray and torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from orchestrator import sweep

        return getattr(sweep, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
