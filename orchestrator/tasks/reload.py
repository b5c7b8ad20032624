"""A compressed model rebuilt from its packed artifact, as its task builds it: the built-in models by their
registered architecture, a model of a task of your own by that task (given as `task`), and handed back as
the user knows it (a task of your own: your module itself). An hf_causal_lm model can also be written as a
directory `transformers` loads."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from orchestrator.io.artifact import load_artifact, read_manifest
from orchestrator.io.storage import fetch
from orchestrator.models.hf import HFCausalLM
from orchestrator.models.registry import ARCHITECTURES, build
from orchestrator.tasks.base import Task
from orchestrator.tasks.hf_lm import load_tokenizer, save_pretrained


def load_packed(path: str | os.PathLike[str], *, task: Task | None = None, tokenizer: bool = False) -> nn.Module:
    """The model in a packed artifact (a path, or its location in a URI storage, downloaded once to this node's
    cache). A built-in model carries `model.vocab` (char_lm's vocabulary) and `model.tokenizer_source` (where an
    hf_causal_lm model's tokenizer came from); nothing named inside an artifact is read unless asked: with
    `tokenizer=True`, `model.tokenizer` is loaded from there, else it is None. A model of a task of your own is
    rebuilt by that task (`task`); its weights come from the artifact and no code named in it is imported."""
    path = fetch(path)
    manifest = read_manifest(path)
    if task is None and manifest["architecture"] not in ARCHITECTURES:
        raise ValueError(f"{path}: a model of a task of your own ({manifest['architecture']!r}); "
                         "rebuild it with load_model(path, task=<that task>)")
    model, meta = load_artifact(path, task.build_model if task is not None else build)
    if task is not None and task.public_model(model) is not model:
        return task.public_model(model)
    model.vocab = meta.get("vocab")
    model.tokenizer, model.tokenizer_source = None, meta.get("tokenizer")
    if tokenizer and meta.get("tokenizer"):  # asked for: read from where the artifact says it came from
        model.tokenizer = load_tokenizer(meta["tokenizer"])
    return model


def export_pretrained(artifact: str | os.PathLike[str], directory: str | os.PathLike[str]) -> Path:
    """Write an hf_causal_lm artifact as a directory `transformers.AutoModelForCausalLM.from_pretrained` loads,
    with its tokenizer: float, float16 and pruned models. Weights quantized to 2..8 bits have no transformers
    form: keep the packed artifact and `load_model` it."""
    manifest = read_manifest(fetch(artifact))
    low_bit = sorted({e["bits"] for e in manifest["tensors"] if e.get("encoding") == "quant"})
    if manifest["architecture"] != HFCausalLM.architecture:
        raise ValueError(f"{artifact}: a {manifest['architecture']} model, not a Hugging Face one; use load_model")
    if low_bit:
        raise ValueError(f"{artifact}: weights quantized to {low_bit} bits have no transformers form; "
                         "use the packed artifact with orchestrator.load_model")
    model = load_packed(artifact, tokenizer=True)  # the directory holds it: reading it is what was asked
    save_pretrained(model, model.tokenizer, directory)
    return Path(directory)
