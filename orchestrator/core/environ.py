"""The process environment, in one place: the variables that give a sweep's settings their defaults (read
once, when a sweep's context is resolved: `engine.context`), and variables set for a block (what Ray, Tune
and MLflow read when a call is made)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

STORAGE_ENV = "ORCHESTRATOR_STORAGE"  # the sweep's storage when the config gives none (a cluster's nodes set it)
TRACKING_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own: the tracking store when the config gives none
ADDRESS_ENV = "RAY_ADDRESS"  # Ray's own: the cluster to join (a Ray job's driver has it)
CACHE_MAX_ENV = "ORCHESTRATOR_CACHE_MAX_GB"  # this node's copies of URI storages' entries kept under this many GB (LRU)
CACHE_ENV = "ORCHESTRATOR_CACHE"  # this node's copy of URI storages (node-local: read where the node reads it)
DEFAULT_STORAGE = "orchestrator_runs"


def from_env(given: str | None, variable: str, default: str | None, env: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """(value, where it came from): `given` ("config"), else $`variable` ("$VARIABLE"), else `default` ("default").

        >>> from_env(None, "ORCHESTRATOR_EXAMPLE", "x", env={}), from_env("y", "ORCHESTRATOR_EXAMPLE", "x", env={})
        (('x', 'default'), ('y', 'config'))
    """
    env = os.environ if env is None else env
    if given is not None:
        return given, "config"
    if env.get(variable):
        return env[variable], f"${variable}"
    return default, "default"


def default_tracking_uri(env: Mapping[str, str] | None = None) -> str:
    """$MLFLOW_TRACKING_URI, else a SQLite file in the current directory (MLflow 3's own default)."""
    return from_env(None, TRACKING_ENV, f"sqlite:///{Path.cwd() / 'mlflow.db'}", env)[0]  # type: ignore[return-value]


def tracking_uri(given: str | None, env: Mapping[str, str] | None = None) -> str:
    """The MLflow store in use: `given`, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db."""
    return given or default_tracking_uri(env)


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
