"""The loader MLflow calls for a front point's model: ``mlflow.pyfunc.load_model("runs:/<run>/model")``.

The logged model holds the packed artifact (`artifact/model.orc`, the same bytes the sweep measured) and
this package's code; loading it rebuilds the compressed model with the product's own reader, on torch
only (no Ray, no MLflow at predict time). `predict` takes a batch of token-id windows, shape (batch,
positions) as int64, and returns the most likely next token at every position, same shape: row i,
column t predicts the token after `x[i, t]`, as the sweep's accuracy scored it.

A model of a task of your own (task python) is rebuilt by that task, pickled beside the artifact
(`artifact/task.pkl`, with the code of its module), and weights a technique of your own encoded are
decoded by its encoding, pickled the same way (`artifact/encodings.pkl`): loading such a model runs that
code, as loading any pickled MLflow model does. `orchestrator.load_model` never unpickles them; it asks
for the task instead, and decodes with the techniques registered in its process.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.io.artifact import ARTIFACT as ARTIFACT_FILE
from orchestrator.io.artifact import load_artifact
from orchestrator.models.registry import build as build_registered
from orchestrator.techniques.quantize import ENCODINGS

TASK_FILE = "task.pkl"
ENCODINGS_FILE = "encodings.pkl"  # the encodings of techniques of your own that the artifact uses
BATCH = 64  # windows per forward pass, as the sweep scored them


class NextTokenModel:
    """What `mlflow.pyfunc.load_model` wraps: token ids in, predicted next token ids out."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    @torch.no_grad()
    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        x = torch.as_tensor(np.asarray(model_input))
        if x.ndim == 1:
            x = x[None]
        out = []
        for chunk in x.split(BATCH):
            logits = self.model(chunk)
            logits = logits[0] if isinstance(logits, (tuple, list)) else logits
            out.append(logits.argmax(-1))
        return torch.cat(out).numpy()


def load_packed(directory: str | Path, build: Any = None, encodings: Any = None) -> torch.nn.Module:
    """The compressed model in a logged model's `artifact` directory (`build`: a task's `build_model`;
    `encodings`: those of techniques of your own, beside the built-in ones)."""
    model, _ = load_artifact(Path(directory) / ARTIFACT_FILE, build or build_registered, {**ENCODINGS, **(encodings or {})})
    return model


def _load_pyfunc(data_path: str) -> NextTokenModel:
    """MLflow's entry point (`loader_module`): `data_path` is the model's `artifact` directory."""
    build, encodings = None, None
    task_file, encodings_file = Path(data_path) / TASK_FILE, Path(data_path) / ENCODINGS_FILE
    if task_file.exists():  # a task of your own: it rebuilds its model
        with open(task_file, "rb") as f:
            build = pickle.load(f).build_model
    if encodings_file.exists():  # a technique of your own: it decodes its weights
        with open(encodings_file, "rb") as f:
            encodings = pickle.load(f)
    return NextTokenModel(load_packed(data_path, build, encodings))
