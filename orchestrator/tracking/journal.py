"""A sweep's tracking journal: every MLflow record the sweep could not deliver, in order, in its storage.

When a tracking call has waited out its retry window (`tracking_retry_s`), the call goes to the journal
instead (`sweeps/<sweep id>/journal/`: `journal.jsonl`, one call per line, and the files it logs, copied),
and so does every later call while the journal holds any: the store receives records in the order the sweep
made them. The tracker delivers the journal, oldest first, as soon as the store answers again: during the
sweep, at its end, when it is resumed, or by `orchestrator sync SWEEP_ID`. Delivering is idempotent:

- a run the journal creates carries a key of its own (tag `orchestrator.run_key`); a run of that key found in the
  experiment is the run, never made twice;
- a metric keeps the time stamp and step it was made with (MLflow keeps one of identical metrics), a param
  its value (MLflow accepts the same value again), a tag or an artifact overwrites itself;
- a model version is created only when none of that name holds the same source.

`replayed` counts the lines delivered, so a delivery cut short (the store away again, the driver killed)
goes on from the first line not delivered.

    >>> import tempfile
    >>> journal = Journal(Path(tempfile.mkdtemp()))
    >>> journal.append("set_terminated", ["run-1", "FINISHED"])
    >>> [e["call"] for e in journal.pending()]
    ['set_terminated']
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag

ENTRIES = "journal.jsonl"  # one delivered-or-not call per line, in the order the sweep made them
REPLAYED = "replayed"  # how many lines of it were delivered
IDS = "run_ids.json"  # a journaled run's key -> the MLflow run id it got when delivered
RUN_KEY_TAG = "orchestrator.run_key"  # the key a journaled run is created with (found again, never made twice)
PENDING_PREFIX = "pending-"  # a run id a journaled create_run hands out until it is delivered

_ENTITIES = {"Metric": Metric, "Param": Param, "RunTag": RunTag}


def _encode(value: Any) -> Any:
    if isinstance(value, (Metric, Param, RunTag)):
        return {"__entity__": type(value).__name__, **{k: getattr(value, k) for k in _fields(value)}}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _fields(value: Any) -> tuple[str, ...]:
    return {"Metric": ("key", "value", "timestamp", "step"), "Param": ("key", "value"), "RunTag": ("key", "value")}[type(value).__name__]


def resolve(value: Any, ids: dict[str, str]) -> Any:
    """The call's arguments back, with every pending run id replaced by the run id it got."""
    if isinstance(value, dict):
        if "__entity__" in value:
            kind = value["__entity__"]
            return _ENTITIES[kind](**{k: resolve(v, ids) for k, v in value.items() if k != "__entity__"})
        return {k: resolve(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, ids) for v in value]
    if isinstance(value, str) and PENDING_PREFIX in value:
        for key, run_id in ids.items():
            value = value.replace(key, run_id)
    return value


class Journal:
    """The journal in `directory` (see the module docstring); `publish(path)` copies a file it wrote to the
    sweep's storage (a URI storage), as the sweep's other files are."""

    def __init__(self, directory: Path, publish: Callable[[Path], Any] | None = None) -> None:
        self.directory, self._publish = Path(directory), publish
        self._lock = threading.Lock()  # Tune's callbacks and the driver's own thread both record
        # (lines written, lines delivered, run ids) as its files hold them: read once, then kept by this, their one
        # writer, so that a tracking call asks the journal without reading it
        self._state: tuple[int, int, dict[str, str]] | None = None

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles its callbacks, and the tracker's journal with them
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_state")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock, self._state = threading.Lock(), None

    def _held(self) -> tuple[int, int, dict[str, str]]:
        if self._state is None:
            path = self.directory / IDS
            ids = json.loads(path.read_text()) if path.is_file() else {}
            self._state = (len(self.entries()), self.replayed(), ids)
        return self._state

    # -- what it holds -----------------------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        path = self.directory / ENTRIES
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def replayed(self) -> int:
        path = self.directory / REPLAYED
        return int(path.read_text()) if path.is_file() else 0

    def pending(self) -> list[dict[str, Any]]:
        return self.entries()[self.replayed():]

    def ids(self) -> dict[str, str]:
        """A journaled run's key -> the run id it got when delivered."""
        return self._held()[2]

    def waiting(self) -> int:
        """How many calls it holds that are not delivered yet."""
        written, done, _ = self._held()
        return written - done

    def __bool__(self) -> bool:  # it holds calls not yet delivered
        return self.waiting() > 0

    # -- writing -----------------------------------------------------------------------------------------------
    def append(self, call: str, args: list[Any], kwargs: dict[str, Any] | None = None, files: list[str] | None = None) -> None:
        """One more call, after every earlier one. `files`: the positions in `args` of paths to copy into the journal
        (the call logs them; they may be gone by the time it is delivered)."""
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            seq, done, ids = self._held()
            args = list(args)
            for i in files or []:
                args[i] = self._keep(Path(args[i]), seq)
            line = json.dumps({"seq": seq, "call": call, "args": _encode(args), "kwargs": _encode(kwargs or {})})
            with open(self.directory / ENTRIES, "a") as f:
                f.write(line + "\n")
                f.flush()
            self._state = (seq + 1, done, ids)
            self._published(self.directory / ENTRIES)

    def _keep(self, path: Path, seq: int) -> str:
        """A copy of the file or directory `path` in the journal's `files/<seq>/`, under the same name."""
        target = self.directory / "files" / str(seq) / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)
            for f in sorted(p for p in target.rglob("*") if p.is_file()):
                self._published(f)
        else:
            shutil.copy2(path, target)
            self._published(target)
        return str(target)

    def _published(self, path: Path) -> None:
        if self._publish is not None:
            self._publish(path)

    # -- delivering --------------------------------------------------------------------------------------------
    def deliver(self, send: Callable[[str, list[Any], dict[str, Any], dict[str, str]], str | None]) -> int:
        """Send the pending calls in order through `send(call, args, kwargs, ids)` (which returns the run id a
        create_run got, or None); stops at the first that raises (re-raised). Returns how many were delivered."""
        with self._lock:
            written, done, ids = self._held()
            ids = dict(ids)
            entries = self.entries()
            delivered = 0
            for entry in entries[done:]:
                args = resolve(entry["args"], ids)
                kwargs = resolve(entry["kwargs"], ids)
                if entry["call"] == "create_run":  # the run's key stays its key (not the id it got)
                    kwargs["tags"][RUN_KEY_TAG] = entry["kwargs"]["tags"][RUN_KEY_TAG]
                run_id = send(entry["call"], args, kwargs, ids)
                if entry["call"] == "create_run" and run_id is not None:
                    ids[kwargs["tags"][RUN_KEY_TAG]] = run_id
                    self._write(IDS, json.dumps(ids, indent=1))
                done += 1
                delivered += 1
                self._write(REPLAYED, str(done))
                self._state = (written, done, ids)
            return delivered

    def _write(self, name: str, text: str) -> None:
        path = self.directory / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        self._published(path)
