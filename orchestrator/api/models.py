"""Models back from a sweep, as a user asks for them: by the packed artifact's path or storage location, or by
the MLflow model a sweep logged (``runs:/<run>/model``, ``models:/<name>@<alias>``, ``models:/<name>/<version>``)."""

from __future__ import annotations

import os
import tempfile

from torch import nn

from orchestrator.io.artifact import ARTIFACT
from orchestrator.tasks.base import Task
from orchestrator.tasks.reload import export_pretrained, load_packed
from orchestrator.tracking.models import download_model


def load_model(path: str | os.PathLike[str], *, task: Task | None = None, tracking_uri: str | None = None,
               tokenizer: bool = False) -> nn.Module:
    """Rebuild a compressed model from an exported artifact (`model.orc`: a path, or its location in a URI
    storage, downloaded once to this node's cache), or from an MLflow model a sweep logged, read from
    `tracking_uri` (default $MLFLOW_TRACKING_URI; no process-wide MLflow setting is read or changed).

    A built-in model carries `model.vocab` (a char_lm model's vocabulary) and `model.tokenizer_source` (where
    an hf_causal_lm model's tokenizer came from); nothing named inside an artifact is read unless you ask:
    with `tokenizer=True` `model.tokenizer` is loaded from there, else it is None. A model of a task of your
    own is rebuilt by that task (`task`), and you get your own module back; its weights come from the
    artifact and no code named in it is imported."""
    if str(path).startswith(("runs:/", "models:/")):
        with tempfile.TemporaryDirectory(prefix="orchestrator-model-") as tmp:  # read, then removed
            return load_packed(download_model(str(path), tracking_uri, into=tmp) / ARTIFACT, task=task, tokenizer=tokenizer)
    return load_packed(path, task=task, tokenizer=tokenizer)


__all__ = ["export_pretrained", "load_model"]
