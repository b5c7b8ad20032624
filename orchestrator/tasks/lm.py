"""What the two language-model tasks share: text from a built-in corpus, local files or a dataset; fixed
windows of `task.context` tokens drawn from a contiguous token stream; next-token accuracy and
perplexity on consecutive windows of a held-out split; decoding speed.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import math
import os
from typing import Any

import torch
from torch import nn

from orchestrator.config.schema import SweepConfig, TaskConfig
from orchestrator.core.errors import ConfigError, show
from orchestrator.core.measure import measure_decode, score_lm
from orchestrator.core.space import param_values
from orchestrator.tasks.base import Split, Task
from orchestrator.tasks.corpora import SPLITS, builtin_text, dataset_text, file_text, split_lengths

log = logging.getLogger("orchestrator")


def task_text(task: TaskConfig) -> str:
    """The task's text: a Hugging Face dataset, local files, or a built-in corpus (first `chars` characters)."""
    if task.dataset is not None:
        text = dataset_text(task.dataset, task.dataset_config, task.dataset_split, task.text_column)
    elif task.files is not None:
        text = file_text(sorted(glob.glob(os.path.expanduser(task.files), recursive=True)), task.text_column)
    else:
        text = builtin_text(task.corpus)
    return text[: task.chars] if task.chars is not None else text


def fewest_tokens(context: int) -> int:
    """The shortest stream whose splits each hold one window of `context` (a training draw needs `context` + 2
    tokens, a scored window `context` + 1)."""
    n = math.ceil((context + 2) / SPLITS[1])
    while min(split_lengths(n)) < context + 2:
        n += 1
    return n


def check_length(tokens: int, task: TaskConfig, source: str, unit: str = "characters") -> None:
    """`ConfigError` when a text of `tokens` (in `unit`) is too short for one window of `task.context` per split."""
    need = fewest_tokens(task.context)
    if tokens < need:
        given = f"`task.files` {show(task.files)}" if task.files is not None else (
            f"`task.dataset` {show(task.dataset)}" if task.dataset is not None else f"`task.corpus` {show(task.corpus)}")
        cut = f" cut to `task.chars` = {task.chars}" if task.chars is not None and task.chars < need else ""
        raise ConfigError(f"{source}: {given}{cut} gives {tokens} {unit}; the 90/5/5 splits need at least {need} for one window "
                          f"of `task.context` = {task.context} in each; give more text or a shorter context")


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_windows(
    tokens: torch.Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs (B, T) and next-symbol targets (B, T), as int64."""
    starts = torch.randint(len(tokens) - context - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(context + 1)  # (B, T+1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


class LanguageModelTask(Task):
    """Next-token prediction over a token stream split 90/5/5 into contiguous train / validation / test."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg  # the YAML's `task` section: text source, context, evaluation settings

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> "LanguageModelTask":
        return cls(cfg)

    @classmethod
    def check_config(cls, cfg: SweepConfig) -> None:
        if cfg.task.options or cfg.task.entry is not None:
            raise ConfigError(f"{cfg.source}: `task.entry` / `task.options` are for task python; {cls.name} is set by "
                              "the other `task` keys")
        if cfg.task.files is not None and cfg.task.dataset is not None:
            raise ConfigError(f"{cfg.source}: `task.files` and `task.dataset` are two text sources; give one")
        if cfg.task.files is not None:  # local text is read here, so that too little of it is told before anything starts
            if not glob.glob(os.path.expanduser(cfg.task.files), recursive=True):
                raise ConfigError(f"{cfg.source}: `task.files` {show(cfg.task.files)} matches no file; give a path or glob "
                                  "pattern (e.g. 'corpus/*.txt') that names your text files")
            check_length(len(task_text(cfg.task)), cfg.task, cfg.source)  # a token takes at least one character
        if cfg.distill.layer_map is not None and "layers" in cfg.params:
            layers = param_values(cfg.params["layers"]) or [1]
            for s_layer, _ in cfg.distill.layer_map:
                if s_layer >= min(layers):
                    raise ConfigError(f"{cfg.source}: `distill.layer_map` pairs student layer {s_layer}, but `params.layers` can be "
                                      f"{min(layers)} (layers 0..{min(layers) - 1}); use lower indices")

    def batch(self, data: Any, split: Split, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_windows(getattr(data, split), batch_size, self.cfg.context, generator)

    def evaluate(self, model: nn.Module, data: Any, split: Split, *, max_examples: int | None = None) -> dict[str, float]:
        """Next-token accuracy, perplexity and loss over the first `max_examples` positions of `split`
        (default `task.eval_tokens`), in consecutive windows of `task.context`, and how many positions that
        was (`eval_positions`: fewer than asked when the split is shorter; a warning says so)."""
        asked = max_examples or self.cfg.eval_tokens
        score = score_lm(model, getattr(data, split), context=self.cfg.context, max_positions=asked)
        if score.positions < asked and max_examples is None:
            log.warning("the %s split holds %s, fewer than task.eval_tokens = %d", split,
                        self.units.count(score.positions, "position"), asked)
        return {"accuracy": score.accuracy, "perplexity": score.perplexity, "loss": math.log(score.perplexity),
                "eval_positions": float(score.positions)}

    def evaluation_settings(self, cfg: SweepConfig) -> Any:
        return {"context": cfg.task.context, "eval_tokens": cfg.task.eval_tokens, "decode_tokens": cfg.task.decode_tokens}

    def example(self, data: Any) -> torch.Tensor:
        return data.test[: self.cfg.context].long()[None]  # (1, T): a fixed held-out prompt

    def measure_extra(self, model: nn.Module, data: Any, *, threads: int) -> dict[str, float]:
        prompt = self.example(data).to(next(model.parameters()).device)
        decode = measure_decode(model, prompt, new_tokens=self.cfg.decode_tokens, threads=threads)
        return {"decode_tokens_per_s": decode}

    def throughput_unit(self) -> str:
        return "tokens"

    def units_per_example(self, example: torch.Tensor) -> int:
        return int(example.shape[1])

    def meta(self, data: Any) -> dict[str, Any]:
        return dict(data.meta)
