"""The public API, in one place; `orchestrator` re-exports it.

- `Sweep`, `load_config`: a search space bound to its task, run on Ray (`api.sweep`); `SweepResult`,
  `SweepProgress`: what it gives back and reports; `TrialOutcome`, `TeacherRecord`: what a trial and the
  teacher measured.
- `load_model`, `export_pretrained`: the models behind a front (`api.models`); `compare`: fronts side by side.
- `Task`, `PythonTask`, `TrialParams`, `register_task`: your own model and data; `register_technique`: a
  compression method of your own; `Objective`, `register_objective`: an objective of your own.
- `ConfigError`: bad input, one line.
"""

from orchestrator.api.models import export_pretrained, load_model
from orchestrator.api.sweep import Sweep, load_config
from orchestrator.core.errors import ConfigError, RayDied, StorageFull
from orchestrator.core.objectives import Objective, register_objective
from orchestrator.engine.result import SweepProgress, SweepResult
from orchestrator.io.records import TeacherRecord, TrialOutcome
from orchestrator.tasks import PythonTask, Task, TrialParams, register_task
from orchestrator.techniques.base import register_technique
from orchestrator.tracking.compare import compare

__all__ = ["ConfigError", "RayDied", "StorageFull", "Objective", "PythonTask", "Sweep", "SweepProgress", "SweepResult", "Task", "TeacherRecord",
           "TrialOutcome", "TrialParams", "compare", "export_pretrained", "load_config", "load_model", "register_objective",
           "register_task", "register_technique"]
