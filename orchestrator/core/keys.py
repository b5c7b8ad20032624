"""Content keys: a short hash of everything that determines a cached result (a cache entry of the storage is
a directory named by one, built once and reused by every later sweep: `io.storage.Storage.entry`)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs as dicts, data hashes, seeds)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """A short hash of named tensors' exact values (a model's state dict, masks): what a stage that starts
    from a model, rather than from a recipe, is keyed by."""
    h = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
