"""The MLflow tracker: a sweep's runs in an MLflow store (a SQLite file, or a tracking server).

Library code uses the explicit `MlflowClient` (no global active run), so concurrent sweeps in one process
and Ray's callback threads cannot cross wires. Every call is timed and retried (`retried`): a tracking
server restarting or a locked SQLite file costs seconds, not records. MLflow's own HTTP client is told to
retry once per try (`CLIENT_ENV`, set once for the whole sweep by the engine) so that the retries here,
paced and bounded, are the ones that count. A call that waits out its window (`outage_s`, the YAML's
`tracking_retry_s`) goes to the sweep's journal when it has one (`tracking.journal`), and is delivered from
there, in order, when the store answers again.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service import utils as mlflow_service

from orchestrator.core.environ import environ
from orchestrator.tracking.base import RUNNING, RunInfo, Tracker, flatten
from orchestrator.tracking.journal import PENDING_PREFIX, RUN_KEY_TAG, Journal, resolve
from orchestrator.tracking.models import MODEL_PATH, ONNX_PATH, package_copy, save_model, save_onnx_model

T = TypeVar("T")
log = logging.getLogger("orchestrator")

_MAX_PARAM = 6000  # MLflow's limit on a param value's length
RETRIES = 3  # tries of each tracking call at least (MLflow's HTTP client retries once inside each)
OUTAGE_S = 180.0  # how long one call waits for a tracking store that is away before it is given up (or journaled)
FLUSH_EVERY_S = 2.0  # while the journal holds calls, how often a new record tries to deliver them (the store away)
CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}  # MLflow's own retries


def quiet_downloads() -> contextlib.AbstractContextManager[None]:
    """No MLflow progress bars while artifacts download (a command's output stays readable)."""
    return environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")


def artifact_root(tracking_uri: str, experiment: str) -> str | None:
    """Next to a SQLite store, not in the current directory; None lets other stores decide."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-") or "experiment"
    return (db.parent / "mlruns" / slug).resolve().as_uri()


class MlflowTracker(Tracker):
    """One MLflow experiment, found or created (`experiment`), in the store at `tracking_uri`."""

    def __init__(self, tracking_uri: str, experiment: str, *, outage_s: float = OUTAGE_S) -> None:
        super().__init__()
        self.uri, self.outage_s = tracking_uri, outage_s
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
        self.attempts = 0  # tries of the last call
        self.down = False  # a call waited `outage_s` in vain: calls are tried once until one goes through
        self.journal: Journal | None = None  # where calls that waited out `outage_s` go, delivered later
        self.delivered = 0  # journaled calls it delivered
        self._last_flush = 0.0  # when it last tried to deliver the journal in vain (monotonic)
        found = self.retried("find experiment", self.client.get_experiment_by_name, experiment)
        self.experiment_id = found.experiment_id if found is not None else self.retried(
            "create experiment", self.client.create_experiment, experiment, artifact_location=artifact_root(tracking_uri, experiment))

    def retried(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, timed, tried again after 1, 2, 4, then every 5 s for up to `outage_s` (a
        tracking server restarting, a locked SQLite file), so that a call goes through within seconds of the
        store coming back. A 4xx answer is not retried. Once a call has waited out `outage_s`, the next ones
        are tried once each until one goes through (a store that stays away does not stall the sweep at every
        call). The last error is raised."""
        started = time.perf_counter()
        waited, tries = (0.0, 1) if self.down else (self.outage_s, RETRIES)
        deadline, pause = time.monotonic() + waited, 1.0
        try:
            for self.attempts in itertools.count(1):
                try:
                    result = fn(*args, **kwargs)
                    self.down = False
                    return result
                except Exception as e:  # a refused connection, a 5xx, a locked SQLite file; not a 4xx
                    if isinstance(e, MlflowException) and 400 <= e.get_http_status_code() < 500:
                        raise
                    if self.attempts >= tries and time.monotonic() + pause > deadline:
                        self.down = waited > 0 or self.down  # it waited the outage out in vain: away
                        raise
                    time.sleep(pause)
                    pause = min(2 * pause, 5.0)
            raise AssertionError("unreachable")
        finally:
            self.count(what, time.perf_counter() - started)

    def call(self, what: str, name: str, *args: Any, files: tuple[int, ...] = (), **kwargs: Any) -> tuple[bool, Any]:
        """(done, result) of the client's call `name`, `retried`. With a journal, a call that waits out the window,
        and every call after it while the journal holds any, is journaled (done, result None) and delivered later,
        in order; `files`: the positions in `args` of paths it logs (copied into the journal). Without one, a call
        that failed every try is a warning kept in `failures`."""
        if self.journal is not None:
            ids = self.journal.ids()
            args, kwargs = resolve(list(args), ids), resolve(kwargs, ids)
            if self.journal:  # earlier records wait there: this one goes after them
                self._journal(name, args, kwargs, files)
                self.flush()
                return True, None
        try:
            return True, self.retried(what, getattr(self.client, name), *args, **kwargs)
        except Exception as e:
            refused = isinstance(e, MlflowException) and 400 <= e.get_http_status_code() < 500
            if self.journal is not None and not refused:
                self._journal(name, list(args), kwargs, files)
                log.warning("MLflow at %s did not answer %s for %g s (%s); this record and the next ones go to the sweep's "
                            "journal %s and are delivered, in order, when it answers", self.uri, what, self.outage_s,
                            type(e).__name__, self.journal.directory)
                return True, None
            times = f"{self.attempts} times" if self.attempts > 1 else "(not retried: MLflow refused it)"
            self.failed(f"MLflow at {self.uri}: {what} failed {times} ({type(e).__name__}: {' '.join(str(e).split())[:300]}); "
                        "the sweep goes on without it")
            return False, None

    def _journal(self, name: str, args: list[Any], kwargs: dict[str, Any], files: tuple[int, ...]) -> None:
        assert self.journal is not None
        self.journal.append(name, args, kwargs, list(files))
        self.journaled += 1

    def flush(self, *, wait: bool = False) -> int:
        """Deliver the journal's calls, oldest first: each tried once (at most every `FLUSH_EVERY_S`), or with
        `wait` retried for the window. Stops at a call the store does not take; returns how many were delivered."""
        if self.journal is None or not self.journal:
            return 0
        if not wait and time.monotonic() - self._last_flush < FLUSH_EVERY_S:
            return 0
        delivered = 0

        def send(name: str, args: list[Any], kwargs: dict[str, Any], ids: dict[str, str]) -> str | None:
            nonlocal delivered
            fn = getattr(self, f"_replay_{name}", None) or getattr(self.client, name)
            try:
                result = self.retried(f"deliver {name}", fn, *args, **kwargs) if wait else fn(*args, **kwargs)
            except MlflowException as e:
                if not 400 <= e.get_http_status_code() < 500:
                    raise
                self.failed(f"MLflow at {self.uri}: the journal's {name} was refused ({' '.join(str(e).split())[:300]}); "
                            "skipped")
                result = None
            delivered += 1
            return result if name == "create_run" else None

        try:
            self.journal.deliver(send)
            self._last_flush, self.down = 0.0, False
        except Exception as e:  # the store away again: what is left waits for the next try
            self._last_flush = time.monotonic()
            if wait:
                log.warning("MLflow at %s: %d journaled record(s) not delivered yet (%s)", self.uri,
                            self.journal.waiting(), type(e).__name__)
        finally:
            self.delivered += delivered
        if delivered and not self.journal:
            log.info("MLflow at %s answers again: %d journaled record(s) delivered", self.uri, delivered)
        return delivered

    def pending(self) -> int:
        return self.journal.waiting() if self.journal is not None else 0

    def _replay_create_run(self, experiment_id: str, *, run_name: str, tags: dict[str, str]) -> str:
        """A journaled run: the run of its key when the store already holds it (the first try went through
        before the answer was lost), else a new one."""
        key = tags[RUN_KEY_TAG]
        found = self.client.search_runs([experiment_id], f"tags.`{RUN_KEY_TAG}` = '{key}'", max_results=1)
        return found[0].info.run_id if found else self.client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id

    def _replay_create_model_version(self, name: str, *, source: str, run_id: str, **kwargs: Any) -> None:
        """A journaled model version: made only when no version of `name` holds `source` already."""
        held = self.client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        if not any(v.source == source for v in held):
            self.client.create_model_version(name, source=source, run_id=run_id, **kwargs)

    def create_run(self, name: str, tags: Mapping[str, str], *, strict: bool = False) -> str | None:
        """With `strict` the run must be made now. Else it carries a key (`RUN_KEY_TAG`): a run the journal takes
        gets the key as its id until it is delivered (calls naming it are delivered with the id it got)."""
        if strict:
            return self.retried("create run " + name, self.client.create_run, self.experiment_id, run_name=name,
                                tags=dict(tags)).info.run_id
        key = f"{PENDING_PREFIX}{uuid.uuid4().hex}"
        done, run = self.call("create run " + name, "create_run", self.experiment_id, run_name=name,
                              tags={**tags, RUN_KEY_TAG: key})
        if run is None:
            return key if done else None  # journaled: the key stands for it
        return run.info.run_id

    def find_runs(self, tags: Mapping[str, str]) -> list[RunInfo]:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = self.retried("find runs", self.client.search_runs, [self.experiment_id], query,
                            order_by=["attributes.start_time ASC"], max_results=50000)
        return [RunInfo(r.info.run_id, r.info.run_name, r.info.status, dict(r.data.tags), dict(r.data.params),
                        dict(r.data.metrics)) for r in runs]

    def reopen_run(self, run_id: str) -> None:
        self.retried("reopen run", self.client.update_run, run_id, status=RUNNING)

    def log(self, run_id: str, *, params: Mapping[str, Any] | None = None, metrics: Mapping[str, Any] | None = None,
            step: int = 0, curves: Mapping[str, Sequence[Sequence[float]]] | None = None,
            tags: Mapping[str, str] | None = None) -> None:
        items = [Param(k, str(v)[:_MAX_PARAM]) for k, v in flatten(params or {}).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.call("log params", "log_batch", run_id, params=items[i : i + 100])
        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)]
        values += [Metric(name, float(v), now, int(at)) for name, points in (curves or {}).items() for at, v in points]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while values or tag_items:  # at most 1000 metrics and 100 tags per call: one, for a trial's results
            self.call("log results", "log_batch", run_id, metrics=values[:1000], tags=tag_items[:100])
            values, tag_items = values[1000:], tag_items[100:]

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> bool:
        if Path(path).is_dir():
            return self.call(f"log {artifact_path}/", "log_artifacts", run_id, str(path), artifact_path, files=(1,))[0]
        return self.call(f"log artifact {Path(path).name}", "log_artifact", run_id, str(path), artifact_path, files=(1,))[0]

    def end_run(self, run_id: str, status: str) -> None:
        self.call(f"end run {run_id} as {status}", "set_terminated", run_id, status)
        # MLflow's client keeps the artifact repository of every run it logged a file to (about 4 KB each, up to 1,024
        # runs): an ended run's is let go, or a long sweep's driver grows by it (one made again if the run logs more)
        getattr(mlflow_service, "_artifact_repos_cache", {}).pop(run_id, None)

    def set_experiment_tag(self, key: str, value: str) -> None:
        self.call("save view (the runs table's)", "set_experiment_tag", self.experiment_id, key, value)

    def log_model(self, run_id: str, artifact: str, example: Any, *, task: Any = None) -> str | None:
        """An MLflow model of the `python_function` flavour (`tracking.models.save_model`) in the run's `model/`."""
        with tempfile.TemporaryDirectory(prefix="orchestrator-model-") as tmp:
            save_model(Path(tmp) / "model", artifact, example, task=task, code=package_copy())
            done = self.log_artifact(run_id, Path(tmp) / "model", MODEL_PATH)
        return f"runs:/{run_id}/{MODEL_PATH}" if done else None

    def log_onnx_model(self, run_id: str, onnx_file: str | Path, example: Any) -> str | None:
        """An MLflow model of the `onnx` flavour (`tracking.models.save_onnx_model`) in the run's `onnx/`."""
        with tempfile.TemporaryDirectory(prefix="orchestrator-onnx-") as tmp:
            save_onnx_model(Path(tmp) / "onnx", onnx_file, example)
            done = self.log_artifact(run_id, Path(tmp) / "onnx", ONNX_PATH)
        return f"runs:/{run_id}/{ONNX_PATH}" if done else None

    def register(self, name: str, uri: str, *, run_id: str, tags: Mapping[str, str], description: str) -> str | None:
        try:
            self.retried("find registered model", self.client.get_registered_model, name)
        except MlflowException:
            self.retried("create registered model", self.client.create_registered_model, name,
                         description="Pareto-front models of orchestrator sweeps")
        done, version = self.call(f"register version {uri} as {name}", "create_model_version", name, source=uri,
                                  run_id=run_id, tags=dict(tags), description=description)
        return str(version.version) if done and version is not None else None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.call(f"set alias {alias}", "set_registered_model_alias", name, alias, version)


@contextlib.contextmanager
def client_settings() -> Iterator[None]:
    """MLflow's client as a sweep uses it (`CLIENT_ENV`), for the block."""
    with environ(**CLIENT_ENV):
        yield
