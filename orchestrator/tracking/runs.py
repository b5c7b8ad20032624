"""One MLflow parent run per sweep (named by the sweep id), one child run per trial (`trial-0001`, ...).

Library code uses the explicit `MlflowClient` (no global active run), so concurrent sweeps in one process
and Ray's callback threads cannot cross wires. Every call is timed (`SweepTracker.seconds`: the tracking
cost a sweep reports) and retried; a tracking server that stays down after the retries costs the sweep
its MLflow record of that call, with a warning, never a trial.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import re
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator.environ import environ
from orchestrator.outcome import TrialOutcome
from orchestrator.storage import fetch

log = logging.getLogger("orchestrator")
T = TypeVar("T")

_MAX_PARAM = 6000  # MLflow's limit on a param value's length
RETRIES = 3  # tries of each tracking call at least (MLflow's HTTP client retries once inside each)
OUTAGE_S = 180.0  # how long one call waits for a tracking store that is away before it is given up
VERSIONED = ("orchestrator", "ray", "torch", "optuna", "mlflow")  # packages whose versions every run carries


def quiet_downloads() -> contextlib.AbstractContextManager[None]:
    """No MLflow progress bars while artifacts download (a command's output stays readable)."""
    return environ(MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")


def run_name(number: int) -> str:
    """A trial's MLflow run name: its number in the sweep, counted on across resumes."""
    return f"trial-{number:04d}"


def environment_tags(*, device: str, data_key: str) -> dict[str, str]:
    """What a run was made with: package versions, the git commit of the working directory (when it is a
    git checkout), the device trials ran on and the hash of the data."""
    tags = {"device": device, "data_hash": data_key}
    for name in VERSIONED:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            tags[f"version.{name}"] = "not installed"
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return tags
    if head.returncode == 0:
        tags["mlflow.source.git.commit"] = head.stdout.strip()  # the UI shows it as the run's source version
        tags["git.dirty"] = str(bool(dirty.stdout.strip())).lower()
    return tags


def _artifact_root(tracking_uri: str, experiment: str) -> str | None:
    """Next to a SQLite store, not in the current directory; None lets other stores decide."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    db = Path(tracking_uri[len("sqlite:///") :])
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", experiment).strip("-") or "experiment"
    return (db.parent / "mlruns" / slug).resolve().as_uri()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class SweepTracker:
    """The sweep's parent run and its trials' child runs in one MLflow experiment."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.attempts = 0  # tries of the last call
        self.down = False  # a call waited `OUTAGE_S` in vain: calls are tried once until one goes through
        self.seconds = 0.0  # spent inside MLflow calls: the sweep's tracking cost
        self.setup_seconds = 0.0  # of which the sweep's own run before its trials (`start_sweep_run` sets it)
        self.seconds_by_call: dict[str, float] = {}  # the same, by what the call did (its first word or two)
        found = self.retried("find experiment", self.client.get_experiment_by_name, experiment)
        if found is None:
            self.experiment_id = self.retried("create experiment", self.client.create_experiment, experiment,
                                              artifact_location=_artifact_root(tracking_uri, experiment))
        else:
            self.experiment_id = found.experiment_id
        self.parent_id: str | None = None
        self.sweep_id = ""  # the parent run's name
        self.child_ids: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self.run_names: dict[str, str] = {}  # Tune trial id -> its run's name (trial-0001, ...)
        self._open: set[str] = set()  # runs started and not yet ended
        self.failures: list[str] = []  # calls that failed after every retry, each in one line
        self.last_number = 0  # the highest trial number of the sweep's runs so far (`reopen` reads it)
        self.stale_closed = 0  # trial runs a killed driver left RUNNING, closed KILLED by `reopen`

    def retried(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`, timed, tried again after 1, 2, 4, then every 5 s for up to `OUTAGE_S` (a
        tracking server restarting, a locked SQLite file), so that a call goes through within seconds of the
        store coming back; MLflow's own HTTP client retries once inside each try. A 4xx answer is not
        retried. Once a call has waited out `OUTAGE_S`, the next ones are tried once each until one goes
        through (a store that stays away does not stall the sweep at every call). The last error is raised."""
        started = time.perf_counter()
        waited, tries = (0.0, 1) if self.down else (OUTAGE_S, RETRIES)
        deadline, pause = time.monotonic() + waited, 1.0
        try:
            for self.attempts in itertools.count(1):
                try:
                    with environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1"):
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
            spent = time.perf_counter() - started
            self.seconds += spent
            kind = " ".join(what.split()[:2])
            self.seconds_by_call[kind] = self.seconds_by_call.get(kind, 0.0) + spent

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[bool, T | None]:
        """(done, result) of a `retried` call. A call that failed every try is logged as a warning and kept
        in `failures`: the sweep goes on without that record."""
        try:
            return True, self.retried(what, fn, *args, **kwargs)
        except Exception as e:
            times = f"{self.attempts} times" if self.attempts > 1 else "(not retried: MLflow refused it)"
            line = (f"MLflow at {self.tracking_uri}: {what} failed {times} ({type(e).__name__}: "
                    f"{' '.join(str(e).split())[:300]}); the sweep goes on without it")
            log.warning("%s", line)
            self.failures.append(line)
            return False, None

    def start(self, *, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str], description: str = "") -> str:
        """The sweep's parent run (strict: without it the sweep has nowhere to log, so it stops here)."""
        tags = {"orchestrator.role": "sweep", **tags, **({"mlflow.note.content": description} if description else {})}
        run = self.retried("create run (the sweep's)", self.client.create_run, self.experiment_id, run_name=run_name, tags=tags)
        self.parent_id, self.sweep_id = run.info.run_id, run_name
        self._open.add(self.parent_id)
        self.log_params(self.parent_id, params)
        return self.parent_id

    def reopen(self, sweep_id: str, recorded: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
        """The parent run of sweep `sweep_id` in this experiment, RUNNING again; `last_number` is set to the
        highest trial number among its runs. A trial run its driver left RUNNING (it was killed) is finished
        from the sweep's record of the trial when there is one (`recorded`: trials.jsonl's rows by trial id;
        the driver died as it logged the run), else closed KILLED. None when the experiment holds no run of
        that sweep."""
        runs = self.retried("find run (the sweep's)", self.client.search_runs, [self.experiment_id],
                            f"tags.sweep_id = '{sweep_id}' and tags.`orchestrator.role` = 'sweep'",
                            order_by=["attributes.start_time ASC"], max_results=1)
        if not runs:
            return None
        parent = runs[0].info.run_id
        self.retried("reopen run (the sweep's)", self.client.update_run, parent, status="RUNNING")
        self.parent_id, self.sweep_id = parent, sweep_id
        self._open.add(parent)
        children = self.retried("find runs (the trials')", self.client.search_runs, [self.experiment_id],
                                f"tags.`mlflow.parentRunId` = '{parent}'", max_results=50000)
        for run in children:
            self.last_number = max(self.last_number, int(run.data.tags.get("trial_number", 0)))
            if run.info.status != "RUNNING":
                continue
            row = (recorded or {}).get(run.data.tags.get("trial_id", ""))
            if row is None:
                self.set_tags(run.info.run_id, {"error": "the sweep's driver stopped before this trial finished; closed "
                                                         "by --resume, which runs its configuration again"})
                self.end(run.info.run_id, "KILLED")
                self.stale_closed += 1
                continue
            numbers = {k: v for k, v in row.items() if k not in run.data.params and isinstance(v, (int, float))
                       and not isinstance(v, bool) and v == v}
            self.record(run.info.run_id, metrics=numbers, tags={
                "recovered": "from the sweep's trials.jsonl by --resume (its driver was killed as it logged this run)",
                **({"error": str(row["error"])} if row.get("error") else {})})
            self.end(run.info.run_id, "FAILED" if row["status"] == "ERROR" else "FINISHED")
        return parent

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Params flattened to dotted keys (``distill.steps``), in batches."""
        items = [Param(k, str(v)[:_MAX_PARAM]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.call("log params", self.client.log_batch, run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        self.record(run_id, metrics=metrics, step=step)

    def record(self, run_id: str, *, metrics: Mapping[str, Any] | None = None, step: int = 0,
               curves: Mapping[str, Sequence[Sequence[float]]] | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Metrics (at `step`), curves and tags in as few `log_batch` calls as MLflow allows (1000
        metrics and 100 tags per call): one, for a trial's results."""
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in (metrics or {}).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)]
        items += [Metric(name, float(v), now, int(at)) for name, points in (curves or {}).items() for at, v in points]
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        while items or tag_items:
            self.call("log results", self.client.log_batch, run_id, metrics=items[:1000], tags=tag_items[:100])
            items, tag_items = items[1000:], tag_items[100:]

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.record(run_id, tags=tags)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.call(f"log artifact {Path(path).name}", self.client.log_artifact, run_id, str(path), artifact_path)

    def log_artifacts(self, run_id: str, directory: str | Path, artifact_path: str) -> bool:
        """A directory's files under `artifact_path`; whether it was logged."""
        return self.call(f"log {artifact_path}/", self.client.log_artifacts, run_id, str(directory), artifact_path)[0]

    def start_trial(self, trial_id: str, params: Mapping[str, Any], *, number: int, tags: Mapping[str, str] | None = None,
                    description: str = "") -> str | None:
        """The child run of trial number `number` (named `trial-0001`, ...); None if MLflow is unreachable."""
        if self.parent_id is None:
            raise RuntimeError("start() the sweep's parent run before its trials")
        name = run_name(number)
        _, run = self.call(
            f"create run {name}", self.client.create_run, self.experiment_id, run_name=name,
            tags={"mlflow.parentRunId": self.parent_id, "orchestrator.role": "trial", "trial_id": trial_id,
                  "trial_number": str(number), **(tags or {}),
                  **({"mlflow.note.content": description} if description else {})},
        )
        if run is None:
            return None
        self.child_ids[trial_id] = run.info.run_id
        self.run_names[trial_id] = name
        self._open.add(run.info.run_id)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end(self, run_id: str, status: str) -> None:
        self.call(f"end run {run_id} as {status}", self.client.set_terminated, run_id, status)
        self._open.discard(run_id)

    def end_sweep(self, status: str) -> None:
        """End the parent run, and as KILLED any trial run still open (a sweep stopped mid-trial)."""
        for run_id in sorted(self._open - {self.parent_id}):
            self.set_tags(run_id, {"error": "the sweep stopped before this trial finished"})
            self.end(run_id, "KILLED")
        if self.parent_id is not None:
            self.end(self.parent_id, status)


def trial_error(trial: Any) -> tuple[str, str | None]:
    """(the error's one-line summary, the path of Tune's full error file) for a failed Tune trial.

    The summary is the last ``SomeError: message`` line of the traceback: for a Ray Train failure that is
    the worker's own exception, not the wrappers around it.
    """
    path = trial.error_file  # written locally before Tune calls on_trial_error (get_error() reads storage)
    if not path or not Path(path).exists():
        return "trial failed (Tune recorded no error file)", None
    text = Path(path).read_text(errors="replace")
    causes = re.findall(r"^(\w+(?:\.\w+)*(?:Error|Exception)\b:? .*)$", text, re.M)
    summary = causes[-1] if causes else " ".join(text.split())[-500:]
    return summary.strip()[:5000], path


def _quietly(method: Callable[..., None]) -> Callable[..., None]:
    """A Tune callback method whose error is logged, not raised: an exception in a callback would stop
    the whole sweep, and the trials' results are kept in storage whatever MLflow says."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except Exception as e:
            log.warning("MLflow tracking: %s failed (%s: %s); the sweep goes on", method.__name__, type(e).__name__, e)
            self.tracker.failures.append(f"{method.__name__}: {e}")

    return wrapper


class TrialRunsCallback(Callback):
    """Ray Tune callback (runs in the sweep's process): a child run per trial, named `trial-0001`, ...
    in start order (a resumed sweep counts on from `first_number`), with its params, a description of
    its pipeline (`describe(config)`), the environment `tags`, its metrics and curves, and its status."""

    def __init__(self, tracker: SweepTracker, tags: Mapping[str, str] | None = None, *, first_number: int = 1,
                 describe: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        self.tracker = tracker
        self.tags = dict(tags or {})  # set on every trial run (e.g. the pipeline, versions)
        self.next_number = first_number
        self.describe = describe
        self._steps: dict[str, int] = {}  # trial id -> last distillation step it reported

    @_quietly
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.tracker.child_ids:
            number, self.next_number = self.next_number, self.next_number + 1
            description = self.describe(trial.config) if self.describe is not None else ""
            self.tracker.start_trial(trial.trial_id, trial.config, number=number, tags=self.tags, description=description)

    @_quietly
    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Validation accuracy reported during distillation (early stopping on): a curve over steps."""
        run_id = self.tracker.child_ids.get(trial.trial_id)
        if run_id is not None and "distill_step" in result:
            self._steps[trial.trial_id] = int(result["distill_step"])
            self.tracker.log_metrics(run_id, {"val_accuracy": result["val_accuracy"]}, step=self._steps[trial.trial_id])

    @_quietly
    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.tracker.child_ids.get(trial.trial_id)
        if run_id is None:  # MLflow was unreachable when it started
            return
        outcome = TrialOutcome.from_result(trial.last_result)
        if outcome is None:  # the sweep's monitor records it as an error
            self.tracker.set_tags(run_id, {"error": "the trial ended without reporting its outcome"})
            self.tracker.end(run_id, "FAILED")
            return
        # at the last step reported, so that the final values are a metric's latest in MLflow
        last = max([self._steps.pop(trial.trial_id, 0), *(int(p[-1][0]) for p in outcome.curves.values() if p)])
        tags = {**outcome.tags, **({"pareto": "false"} if outcome.status == "COMPLETED" else {})}  # the front: at the end
        if outcome.cache_hits:
            tags.update({f"cache_hit.{stage}": str(hit).lower() for stage, hit in outcome.cache_hits.items()})
        if outcome.status == "STOPPED":
            tags.update({"early_stopped": "true", "stop_reason": outcome.stop_reason or ""})
        if outcome.warnings:  # measured with less than asked (e.g. fewer held-out positions)
            tags["warning"] = "; ".join(outcome.warnings)
        if outcome.artifact:
            self.tracker.log_artifact(run_id, fetch(outcome.artifact))  # from this node's copy of the storage
            tags["artifact"] = outcome.artifact
        # distillation's loss and validation accuracy by step, the results and the tags: one batch
        self.tracker.record(run_id, metrics=outcome.numbers(), step=last, curves=outcome.curves, tags=tags)
        self.tracker.end(run_id, "FINISHED")

    @_quietly
    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.tracker.child_ids.get(trial.trial_id)
        if run_id is None:
            return
        summary, path = trial_error(trial)
        self.tracker.set_tags(run_id, {"error": summary})
        if path:
            self.tracker.log_artifact(run_id, path)  # the whole traceback, worker side included
        self.tracker.end(run_id, "FAILED")


__all__ = ["SweepTracker", "TrialRunsCallback", "environment_tags", "flatten", "run_name", "trial_error"]
