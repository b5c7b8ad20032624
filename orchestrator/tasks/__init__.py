"""Tasks: where the data, the model family and the held-out score come from.

`load_data` reads either kind of stored corpus; `model_config` / `build_model_from` turn any model the
stages handle (the built-in GPT, a Hugging Face causal LM) into a plain dict and back, which is how
checkpoints, distillation jobs and packed artifacts name an architecture.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Union

import torch
from torch import nn

from orchestrator.tasks.char_lm import CharData
from orchestrator.tasks.corpora import TokenData
from orchestrator.tasks.gpt import GPT, GPTConfig
from orchestrator.tasks.hf_lm import HFCausalLM, HFConfig

LMData = Union[CharData, TokenData]


def load_data(path: str | os.PathLike[str]) -> LMData:
    """A stored corpus: characters (`char_lm`) or tokens (`hf_causal_lm`)."""
    blob = torch.load(path, weights_only=True)
    if blob.get("kind") == "tokens":
        return TokenData.load(path)
    return CharData(**blob)


def model_config(model: nn.Module) -> dict[str, Any]:
    """A JSON-able dict that `build_model_from` turns back into an (untrained) model of the same shape."""
    if isinstance(model, HFCausalLM):
        return {"architecture": "hf_causal_lm", **dataclasses.asdict(model.cfg)}
    if isinstance(model, GPT):
        return dataclasses.asdict(model.cfg)
    raise TypeError(f"no config form for a {type(model).__name__}")


def build_model_from(config: dict[str, Any]) -> nn.Module:
    """The model `config` describes (a GPT when it names no architecture), freshly initialised."""
    config = dict(config)
    if config.pop("architecture", "gpt") == "hf_causal_lm":
        return HFCausalLM(HFConfig(**config))
    return GPT(GPTConfig(**config))
