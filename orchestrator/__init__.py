"""orchestrator: multi-objective compression sweeps (distill -> prune -> quantize) on Ray, searched by
Optuna, tracked in MLflow.

The public API lives in `orchestrator.api` and is re-exported here; it is imported on first use, so that
`import orchestrator` (and loading a logged model, which needs torch and this package only) does not
import Ray, Optuna or MLflow.

    >>> import orchestrator
    >>> sorted(orchestrator.__all__)
    ['ConfigError', 'Objective', 'PythonTask', 'RayDied', 'StorageFull', 'Sweep', 'SweepProgress', 'SweepResult', 'Task', 'TeacherRecord', 'TrialOutcome', 'TrialParams', 'compare', 'export_pretrained', 'load_config', 'load_model', 'register_objective', 'register_task', 'register_technique']
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.api import (
        ConfigError,
        Objective,
        RayDied,
        StorageFull,
        PythonTask,
        Sweep,
        SweepProgress,
        SweepResult,
        Task,
        TeacherRecord,
        TrialOutcome,
        TrialParams,
        compare,
        export_pretrained,
        load_config,
        load_model,
        register_objective,
        register_task,
        register_technique,
    )

__all__ = ["ConfigError", "Objective", "PythonTask", "RayDied", "StorageFull", "Sweep", "SweepProgress", "SweepResult", "Task", "TeacherRecord",
           "TrialOutcome", "TrialParams", "compare", "export_pretrained", "load_config", "load_model", "register_objective",
           "register_task", "register_technique"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("orchestrator.api"), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
