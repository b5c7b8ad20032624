"""Environment variables set for a block: what Ray, Tune and MLflow read when a call is made."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def environ(**values: str | None) -> Iterator[None]:
    """Set environment variables (None: leave as is) for the duration, then restore them.

        >>> with environ(ORCHESTRATOR_EXAMPLE="1"):
        ...     os.environ["ORCHESTRATOR_EXAMPLE"]
        '1'
        >>> "ORCHESTRATOR_EXAMPLE" in os.environ
        False
    """
    before = {k: os.environ.get(k) for k, v in values.items() if v is not None}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
