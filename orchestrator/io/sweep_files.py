"""A sweep's own files in its storage, under `sweeps/<sweep id>/`: `config.yaml` (the config as run),
`trials.jsonl` (one line per ended trial), `front.json` (the current front, which trials that stop early
read), the Optuna study (`optuna.db`, unless `study_storage` names a database), the front plots, and each
trial's artifact under `trials/<trial id>/`.

The sweep's driver writes them in its node's copy and publishes each one after writing it, so a URI
storage always holds the latest; trials read `front.json` from the storage itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.io.files import replaced
from orchestrator.io.records import RungRecord, TrialRecord, from_json, to_json
from orchestrator.io.storage import Storage

CONFIG_FILE = "config.yaml"  # the sweep's config, as run (a resumed sweep must match its params)
TRIALS_FILE = "trials.jsonl"  # one line per ended trial: what the trials table holds
FRONT_FILE = "front.json"
RUNGS_FILE = "rungs.jsonl"  # students judged at the rungs of successive halving (`fidelity`), in the order judged
STUDY_FILE = "optuna.db"
JOURNAL_DIR = "journal"  # tracking records MLflow could not take yet (`tracking.journal`)


@dataclass(frozen=True)
class SweepFiles:
    """The files of sweep `sweep_id` in `store`.

    Example:
        >>> files = SweepFiles(Storage("/data/runs"), "quickstart-20261130-0900-ab12cd")
        >>> str(files.path(CONFIG_FILE))
        '/data/runs/sweeps/quickstart-20261130-0900-ab12cd/config.yaml'
    """

    store: Storage
    sweep_id: str

    def path(self, *name: str) -> Path:
        """This node's copy of a file of the sweep."""
        return self.store.path("sweeps", self.sweep_id, *name)

    def location(self, *name: str) -> str:
        return self.store.location("sweeps", self.sweep_id, *name)

    def write_text(self, name: str, text: str) -> None:
        """Replace a file atomically in this node's copy, then publish it."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced(path) as tmp:
            tmp.write_text(text)
        self.store.publish(path)

    def append_record(self, record: TrialRecord) -> None:
        """One more line of `trials.jsonl` (then published): how a trial ended."""
        path = self.path(TRIALS_FILE)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            at = f.tell()
            try:
                f.write(to_json(record) + "\n")
                f.flush()
            except OSError:  # a disk that filled: the file as it was, never half a line
                f.truncate(at)
                raise
        self.store.publish(path)

    def read_records(self) -> list[TrialRecord]:
        """Every line of `trials.jsonl` as the storage holds it, in the order the trials ended."""
        text = self.read_text(TRIALS_FILE) or ""
        return [from_json(TrialRecord, line) for line in text.splitlines() if line.strip()]

    def write_rungs(self, records: Sequence[RungRecord]) -> None:
        """Every rung judgement so far (replaced whole, then published: the trials read it)."""
        self.write_text(RUNGS_FILE, "".join(to_json(r) + "\n" for r in records))

    def read_rungs(self) -> list[RungRecord]:
        text = self.read_text(RUNGS_FILE) or ""
        return [from_json(RungRecord, line) for line in text.splitlines() if line.strip()]

    def publish(self, name: str) -> None:
        if self.path(name).is_file():
            self.store.publish(self.path(name))

    def read_text(self, name: str) -> str | None:
        """A file as the storage holds it now (None if absent)."""
        return self.store.read_text("sweeps", self.sweep_id, name)

    def pull(self, *names: str) -> None:
        """Bring this node's copy of these files up to date with the storage (to resume the sweep here)."""
        for name in names:
            self.store.pull("sweeps", self.sweep_id, name)

    def pull_journal(self) -> None:
        """This node's copy of the journal brought up to date with the storage (`orchestrator sync` on another node)."""
        if not self.store.remote:
            return
        for name in self.store.listdir("sweeps", self.sweep_id, JOURNAL_DIR):
            self._pull_tree(JOURNAL_DIR, name)

    def _pull_tree(self, *parts: str) -> None:
        children = self.store.listdir("sweeps", self.sweep_id, *parts)
        if children:
            for child in children:
                self._pull_tree(*parts, child)
        else:
            self.store.pull("sweeps", self.sweep_id, *parts)

    def study_url(self, study_storage: str | None) -> str:
        """The Optuna study's storage: `study_storage`, else SQLite in this node's copy (published after
        every trial when the storage is a URI)."""
        if study_storage:
            return study_storage
        self.path().mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{self.path(STUDY_FILE)}"

    def write_front(self, objectives: Sequence[str], points: np.ndarray) -> None:
        """The current front's rows (one column per objective, in order)."""
        self.write_text(FRONT_FILE, json.dumps({"objectives": list(objectives), "points": np.asarray(points, float).tolist()}))

    def read_front(self, objectives: Sequence[str]) -> np.ndarray:
        """(n, len(objectives)) rows of the current front; empty before any trial has finished."""
        text = self.read_text(FRONT_FILE)
        if text is None:
            return np.zeros((0, len(objectives)))
        front = json.loads(text)
        if front["objectives"] != list(objectives):
            raise ValueError(f"{self.location(FRONT_FILE)} holds a front over {front['objectives']}, not {list(objectives)}")
        return np.asarray(front["points"], dtype=float).reshape(-1, len(objectives))
