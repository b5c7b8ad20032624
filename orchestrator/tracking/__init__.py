"""MLflow: the only package that imports mlflow.

- `runs`: the sweep's parent run and one child run per trial (`SweepTracker`, `TrialRunsCallback`).
- `models`: front points logged as MLflow models and registered with aliases; `load_model` of a
  ``runs:/`` or ``models:/`` URI.
- `pyfunc`: the loader MLflow calls for those models (torch and this package only: no Ray, no MLflow).
- `compare`: fronts of several sweeps side by side. `ui`: the MLflow UI for the store in use.

Names are imported lazily, so that loading a logged model needs neither Ray nor the tracking code.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {"SweepTracker": "runs", "TrialRunsCallback": "runs", "flatten": "runs", "trial_error": "runs",
          "log_front_models": "models", "register_front": "models", "compare": "compare"}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"orchestrator.tracking.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'orchestrator.tracking' has no attribute {name!r}")
