"""Content keys of the storage's cache entries: an entry is a directory named by the hash of everything
that determines it, built once and reused by every later sweep (`storage.Storage.entry`)."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs as dicts, data hashes, seeds)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
