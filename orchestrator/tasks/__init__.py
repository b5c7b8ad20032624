"""Tasks: where the data, the students' shape parameters, the model family and the held-out score come from
(see `tasks.base.Task`).

Built in: `char_lm` (a character-level GPT trained here) and `hf_causal_lm` (a pretrained Hugging Face
causal LM); `python` brings a user's own model and data (`tasks.python.PythonTask`).
"""

from orchestrator.tasks.base import TASKS, Task, TrialParams, Units, register_task, task_class, task_from_config
from orchestrator.tasks.char_lm import CharLMTask
from orchestrator.tasks.hf_lm import HFCausalLMTask
from orchestrator.tasks.python import PythonTask

__all__ = ["TASKS", "CharLMTask", "HFCausalLMTask", "PythonTask", "Task", "TrialParams", "Units", "register_task", "task_class",
           "task_from_config"]
