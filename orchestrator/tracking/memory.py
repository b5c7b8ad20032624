"""A tracker that keeps every record in this process: the driver's fast tests (the recorder, recovery,
reopening and resuming a sweep, without an MLflow store), and a sweep that needs no store
(`Sweep.run(tracker=MemoryTracker())`). Its model URIs are the packed artifacts' locations, which
`orchestrator.load_model` reads."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.tracking.base import RUNNING, RunInfo, Tracker, flatten


@dataclass
class MemoryRun:
    run_id: str
    name: str
    status: str = RUNNING
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # name -> [(step, value), ...] as logged
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: dict[str, bytes] = field(default_factory=dict)  # artifact path -> content
    started: float = field(default_factory=time.time)

    def latest(self) -> dict[str, float]:
        """Each metric's value at its highest step (MLflow's "latest")."""
        return {name: max(points, key=lambda p: p[0])[1] for name, points in self.metrics.items()}


class MemoryTracker(Tracker):
    """Runs, a registry and experiment tags in dictionaries (see the module docstring)."""

    def __init__(self, experiment: str = "memory") -> None:
        super().__init__()
        self.uri, self.experiment_id = "memory:", experiment
        self.runs: dict[str, MemoryRun] = {}
        self.experiment_tags: dict[str, str] = {}
        self.registry: dict[str, list[dict[str, Any]]] = {}  # name -> versions (1-based by position)
        self.aliases: dict[tuple[str, str], str] = {}  # (name, alias) -> version
        self.unreachable = False  # a test's switch: every call fails, as with a store that is down

    def _reached(self, what: str) -> bool:
        if self.unreachable:
            self.failed(f"memory tracker: {what} failed (the store is unreachable); the sweep goes on without it")
        return not self.unreachable

    def create_run(self, name: str, tags: Mapping[str, str], *, strict: bool = False) -> str | None:
        if self.unreachable and strict:
            raise ConnectionError("memory tracker: the store is unreachable")
        if not self._reached(f"create run {name}"):
            return None
        run = MemoryRun(uuid.uuid4().hex, name, tags=dict(tags))
        self.runs[run.run_id] = run
        return run.run_id

    def find_runs(self, tags: Mapping[str, str]) -> list[RunInfo]:
        found = [r for r in self.runs.values() if all(r.tags.get(k) == v for k, v in tags.items())]
        return [RunInfo(r.run_id, r.name, r.status, dict(r.tags), dict(r.params), r.latest())
                for r in sorted(found, key=lambda r: r.started)]

    def reopen_run(self, run_id: str) -> None:
        if self._reached("reopen run"):
            self.runs[run_id].status = RUNNING

    def log(self, run_id: str, *, params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
            step: int = 0, curves: Mapping[str, Sequence[Sequence[float]]] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        if not self._reached("log results"):
            return
        run = self.runs[run_id]
        run.params.update({k: str(v) for k, v in flatten(params or {}).items()})
        for name, value in (metrics or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run.metrics.setdefault(name, []).append((step, float(value)))
        for name, points in (curves or {}).items():
            run.metrics.setdefault(name, []).extend((int(at), float(v)) for at, v in points)
        run.tags.update({k: str(v) for k, v in (tags or {}).items()})

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> bool:
        if not self._reached(f"log artifact {Path(path).name}"):
            return False
        path, run = Path(path), self.runs[run_id]
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            name = f.name if path.is_file() else str(f.relative_to(path))
            run.artifacts["/".join(p for p in (artifact_path, name) if p)] = f.read_bytes()
        return True

    def end_run(self, run_id: str, status: str) -> None:
        if self._reached(f"end run {run_id} as {status}"):
            self.runs[run_id].status = status

    def set_experiment_tag(self, key: str, value: str) -> None:
        if self._reached("save view"):
            self.experiment_tags[key] = value

    def log_model(self, run_id: str, artifact: str, example: Any, *, task: Any = None) -> str | None:
        if not self._reached("log model"):
            return None
        self.runs[run_id].tags["model_artifact"] = artifact
        return artifact  # `orchestrator.load_model` reads the packed artifact itself

    def register(self, name: str, uri: str, *, run_id: str, tags: Mapping[str, str], description: str) -> str | None:
        if not self._reached(f"register version {uri} as {name}"):
            return None
        versions = self.registry.setdefault(name, [])
        versions.append({"source": uri, "run_id": run_id, "tags": dict(tags), "description": description})
        return str(len(versions))

    def set_alias(self, name: str, alias: str, version: str) -> None:
        if self._reached(f"set alias {alias}"):
            self.aliases[(name, alias)] = version
