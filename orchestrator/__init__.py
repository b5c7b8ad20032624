"""orchestrator: multi-objective compression sweeps (distill -> prune -> quantize) on Ray, searched by
Optuna, tracked in MLflow.

    >>> import orchestrator
    >>> sorted(orchestrator.__all__)
    ['ConfigError', 'Objective', 'PythonTask', 'Sweep', 'SweepProgress', 'SweepResult', 'Task', 'TrialOutcome', 'TrialParams', 'compare', 'export_pretrained', 'load_config', 'load_model', 'register_objective', 'register_task']
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.config import ConfigError, load_config
from orchestrator.objectives import Objective, register_objective

if TYPE_CHECKING:
    from orchestrator.sweep import Sweep, SweepProgress, SweepResult, export_pretrained, load_model
    from orchestrator.outcome import TrialOutcome
    from orchestrator.tasks import PythonTask, Task, TrialParams, register_task
    from orchestrator.tracking.compare import compare

__all__ = ["ConfigError", "Objective", "PythonTask", "Sweep", "SweepProgress", "SweepResult", "Task", "TrialOutcome", "TrialParams",
           "compare", "export_pretrained", "load_config", "load_model", "register_objective", "register_task"]

_LAZY = {"Sweep": "sweep", "SweepProgress": "sweep", "SweepResult": "sweep", "export_pretrained": "sweep",
         "load_model": "sweep", "PythonTask": "tasks", "Task": "tasks", "TrialParams": "tasks",
         "register_task": "tasks", "TrialOutcome": "outcome", "compare": "tracking.compare"}  # importing them brings in Ray and torch


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"orchestrator.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
