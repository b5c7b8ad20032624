"""Content-addressed entries in the sweep's storage: built once, reused by every later sweep.

An entry is a directory named by the hash of everything that determines it. It is written under a
temporary name and renamed into place, so a reader never sees half an entry and two writers racing
for the same key leave one whole entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts (configs as dicts, data hashes, seeds)."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def get_or_build(root: Path, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
    """Return (entry directory, hit). On a miss `build(tmp_dir)` fills a fresh directory first.

    Args:
        root: the cache's directory (e.g. ``<storage>/teachers``).
        key: from `content_key`.
        build: writes the entry's files into the directory it is given.
    """
    entry = root / key
    if (entry / ".complete").exists():
        return entry, True
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{key}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        build(tmp)
        (tmp / ".complete").touch()
        try:
            os.rename(tmp, entry)
        except OSError:  # another writer finished first: theirs is as good as ours
            if not (entry / ".complete").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry, False
