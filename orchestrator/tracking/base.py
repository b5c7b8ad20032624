"""The tracker interface: where a sweep's records go.

A `Tracker` is one experiment of runs, each with params, metrics (by step), tags and files, and a registry
of models. `MlflowTracker` (`tracking.mlflow_store`) writes to an MLflow store; `MemoryTracker`
(`tracking.memory`) keeps everything in this process (the driver's fast tests, and sweeps that need no
store). What a sweep records in them, start to end, is written once against this interface
(`tracking.sweep_runs`, `tracking.front`).

Every call is timed (`seconds`, by kind in `seconds_by_call`). A call that cannot be made is one warning,
kept in `failures`, and the sweep goes on without that record: tracking never fails a trial. Only the
sweep's own run must be created (`create_run(..., strict=True)`), or the sweep has nowhere to record.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("orchestrator")
RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"  # a run's status


@dataclass(frozen=True)
class RunInfo:
    """A run as a tracker holds it."""

    run_id: str
    name: str
    status: str  # RUNNING, FINISHED, FAILED or KILLED
    tags: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)  # each metric's latest value


class Tracker(abc.ABC):
    """One experiment of runs (see the module docstring)."""

    uri: str  # where the records go (MLflow's tracking URI, or `memory:`)
    experiment_id: str

    def __init__(self) -> None:
        self.seconds = 0.0  # spent inside tracking calls: what tracking cost the sweep
        self.seconds_by_call: dict[str, float] = {}  # the same, by what the call did (its first word or two)
        self.failures: list[str] = []  # calls that could not be made, each in one line
        self.journaled = 0  # calls kept in the sweep's journal to be delivered later (a store away: `tracking.journal`)

    # -- runs -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_run(self, name: str, tags: Mapping[str, str], *, strict: bool = False) -> str | None:
        """A new RUNNING run named `name`; its id, or None when it could not be made (`strict`: raise instead)."""

    @abc.abstractmethod
    def find_runs(self, tags: Mapping[str, str]) -> list[RunInfo]:
        """The experiment's runs whose tags hold all of `tags`, oldest first."""

    @abc.abstractmethod
    def reopen_run(self, run_id: str) -> None:
        """A finished run RUNNING again."""

    @abc.abstractmethod
    def log(self, run_id: str, *, params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
            step: int = 0, curves: Mapping[str, Sequence[Sequence[float]]] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        """Params (flat names), metrics at `step`, curves ([[step, value], ...] by name) and tags, in as few calls
        as the store allows."""

    @abc.abstractmethod
    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> bool:
        """A file (or a directory's files) among the run's artifacts; whether it was logged."""

    @abc.abstractmethod
    def end_run(self, run_id: str, status: str) -> None:
        """The run ended with `status` (FINISHED, FAILED or KILLED)."""

    @abc.abstractmethod
    def set_experiment_tag(self, key: str, value: str) -> None:
        """A tag of the experiment (the MLflow UI reads saved views from them)."""

    def flush(self, *, wait: bool = False) -> int:
        """Deliver what the tracker journaled while its store was away (`wait`: retried for its window); how many
        records it delivered. A tracker that never journals has nothing to deliver."""
        return 0

    def pending(self) -> int:
        """Journaled records not delivered yet."""
        return 0

    # -- models -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def log_model(self, run_id: str, artifact: str, example: Any, *, task: Any = None) -> str | None:
        """The packed `artifact` as a loadable model in the run; its URI (what `orchestrator.load_model` takes),
        or None when it could not be logged. `task`: rebuilds a model of a task of your own."""

    def log_onnx_model(self, run_id: str, onnx_file: str | Path, example: Any) -> str | None:
        """The exported `.onnx` file as a model ONNX Runtime loads without this package (the `onnx` flavour);
        its URI, or None when this store keeps no models of other formats."""
        return None

    @abc.abstractmethod
    def register(self, name: str, uri: str, *, run_id: str, tags: Mapping[str, str], description: str) -> str | None:
        """A new version of the registered model `name` from the model at `uri`; its version, or None."""

    @abc.abstractmethod
    def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point `name@alias` at `version`."""

    # -- cost -------------------------------------------------------------------------------------
    def count(self, what: str, seconds: float) -> None:
        """Add a call's time to the accounts."""
        self.seconds += seconds
        kind = " ".join(what.split()[:2])
        self.seconds_by_call[kind] = self.seconds_by_call.get(kind, 0.0) + seconds

    def failed(self, line: str) -> None:
        """A call that could not be made: one warning, and the sweep goes on without that record."""
        log.warning("%s", line)
        self.failures.append(line)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: params as trackers take them.

        >>> flatten({"distill": {"steps": 3}, "trials": 2})
        {'distill.steps': 3, 'trials': 2}
    """
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
