"""A sweep's settings resolved once: the storage, the MLflow tracking store, the Ray cluster and the objectives,
each from the config, else the environment, else its default, and the registries its workers need (the
objectives, the artifact encodings) as the driver has them. Nothing after this reads the environment for
them: every step of the sweep, and every Ray worker it starts, receives the same immutable `SweepContext`.

    >>> from orchestrator.config import load_config
    >>> ctx = resolve(load_config(None, overrides={"storage": "/data/runs"}), env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    >>> ctx.storage.where, ctx.tracking_uri, ctx.ray_address, ctx.objectives.names
    ('/data/runs', 'http://mlflow:5000', None, ('accuracy', 'size_mb', 'latency_ms'))
    >>> ctx.origins["storage"], ctx.origins["tracking_uri"]
    ('<defaults>: `storage`', '$MLFLOW_TRACKING_URI')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.config.rules import check_storage_value
from orchestrator.config.schema import SweepConfig
from orchestrator.core.environ import ADDRESS_ENV, DEFAULT_STORAGE, STORAGE_ENV, TRACKING_ENV, from_env
from orchestrator.core.objectives import Objectives
from orchestrator.core.space import ObjectiveConstraints
from orchestrator.io.storage import Storage
from orchestrator.techniques.quantize import ENCODINGS, EncodedTensor


@dataclass(frozen=True)
class SweepContext:
    """What every step of a sweep runs with (see the module docstring)."""

    config: SweepConfig
    storage: Storage  # `storage`, else $ORCHESTRATOR_STORAGE (what a cluster's nodes set), else ./orchestrator_runs
    tracking_uri: str  # `tracking_uri`, else $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db
    ray_address: str | None  # `address`, else $RAY_ADDRESS (a Ray job's driver has it); None: a local Ray
    objectives: Objectives  # the sweep's objectives and the registry snapshot they come from (yours included)
    encodings: Mapping[str, type[EncodedTensor]] = field(default_factory=lambda: dict(ENCODINGS), compare=False)  # how the
    # artifact's integer forms decode: the driver's registry, techniques of your own included (workers do not import them)
    origins: Mapping[str, str] = field(default_factory=dict, compare=False)  # setting -> where its value came from, for errors

    @property
    def constraints(self) -> ObjectiveConstraints:
        return ObjectiveConstraints(self.config.constraints.values)

    def named(self, flags: Mapping[str, str] | None = None) -> dict[str, str]:
        """How errors name each setting's source: a CLI flag when one gave it, else its origin."""
        return {**self.origins, **(flags or {})}


def resolve(config: SweepConfig, env: Mapping[str, str] | None = None) -> SweepContext:
    """The context of `config`: each setting from the config, else the environment (`env`, default this
    process's), else its default; `ConfigError` for a storage location from the environment that cannot be one."""
    env = os.environ if env is None else env
    source = config.source
    storage, where = from_env(config.storage, STORAGE_ENV, DEFAULT_STORAGE, env)
    tracking, tracking_from = from_env(config.tracking_uri, TRACKING_ENV, f"sqlite:///{Path.cwd() / 'mlflow.db'}", env)
    address, address_from = from_env(config.address, ADDRESS_ENV, None, env)

    def origin(key: str, came_from: str) -> str:
        return came_from if came_from.startswith("$") else f"{source}: `{key}`" + (" (default)" if came_from == "default" else "")

    origins = {"storage": origin("storage", where), "tracking_uri": origin("tracking_uri", tracking_from),
               "address": origin("address", address_from)}
    if where != "config":  # the config's own value was checked when it was built
        check_storage_value(storage, origins["storage"], source)  # type: ignore[arg-type]
    return SweepContext(config=config, storage=Storage(storage), tracking_uri=tracking, ray_address=address or None,  # type: ignore[arg-type]
                        objectives=Objectives(config.objectives), origins=origins)
