"""MLflow: one parent run per sweep, one child run per trial. The only module that imports mlflow.

Library code uses the explicit `MlflowClient` (no global active run), so concurrent sweeps in one process
and Ray's callback threads cannot cross wires.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from orchestrator.outcome import TrialOutcome
from orchestrator.storage import fetch

_MAX_PARAM = 6000  # MLflow's limit on a param value's length


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
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=_artifact_root(tracking_uri, experiment)
            )
        else:
            self.experiment_id = found.experiment_id
        self.parent_id: str | None = None
        self.child_ids: dict[str, str] = {}  # Tune trial id -> MLflow run id
        self._open: set[str] = set()  # runs started and not yet ended

    def start(self, *, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={"orchestrator.role": "sweep", **tags})
        self.parent_id = run.info.run_id
        self._open.add(self.parent_id)
        self.log_params(self.parent_id, params)
        return self.parent_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:_MAX_PARAM]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, run_id: str, path: str | Path) -> None:
        self.client.log_artifact(run_id, str(path))

    def start_trial(self, trial_id: str, params: Mapping[str, Any]) -> str:
        if self.parent_id is None:
            raise RuntimeError("start() the sweep's parent run before its trials")
        run = self.client.create_run(
            self.experiment_id,
            run_name=trial_id,
            tags={"mlflow.parentRunId": self.parent_id, "orchestrator.role": "trial", "trial_id": trial_id},
        )
        self.child_ids[trial_id] = run.info.run_id
        self._open.add(run.info.run_id)
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def end(self, run_id: str, status: str) -> None:
        self.client.set_terminated(run_id, status)
        self._open.discard(run_id)

    def end_sweep(self, status: str) -> None:
        """End the parent run, and as KILLED any trial run still open (a sweep stopped mid-trial)."""
        for run_id in sorted(self._open - {self.parent_id}):
            self.set_tags(run_id, {"error": "the sweep stopped before this trial finished"})
            self.end(run_id, "KILLED")
        if self.parent_id is not None:
            self.end(self.parent_id, status)

    def experiment_url_hint(self) -> str:
        """The command that opens this experiment in the MLflow UI."""
        return f"mlflow ui --backend-store-uri {self.tracking_uri}  # then open http://127.0.0.1:5000/#/experiments/{self.experiment_id}/runs"


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


class TrialRunsCallback(Callback):
    """Ray Tune callback (runs in the sweep's process): a child run per trial, its params, metrics, status."""

    def __init__(self, tracker: SweepTracker, tags: Mapping[str, str] | None = None) -> None:
        self.tracker = tracker
        self.tags = dict(tags or {})  # set on every trial run (e.g. the pipeline)
        self._steps: dict[str, int] = {}  # trial id -> last distillation step it reported

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.tracker.child_ids:
            run_id = self.tracker.start_trial(trial.trial_id, trial.config)
            if self.tags:
                self.tracker.set_tags(run_id, self.tags)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Validation accuracy reported during distillation (early stopping on): a curve over steps."""
        run_id = self.tracker.child_ids.get(trial.trial_id)
        if run_id is not None and "distill_step" in result:
            self._steps[trial.trial_id] = int(result["distill_step"])
            self.tracker.log_metrics(run_id, {"val_accuracy": result["val_accuracy"]}, step=self._steps[trial.trial_id])

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.tracker.child_ids[trial.trial_id]
        outcome = TrialOutcome.from_result(trial.last_result)
        if outcome is None:  # the sweep's monitor records it as an error
            self.tracker.set_tags(run_id, {"error": "the trial ended without reporting its outcome"})
            self.tracker.end(run_id, "FAILED")
            return
        # at the last step reported, so that the final values are a metric's latest in MLflow
        self.tracker.log_metrics(run_id, outcome.numbers(), step=self._steps.pop(trial.trial_id, 0))
        if outcome.cache_hits:
            self.tracker.set_tags(run_id, {f"cache_hit.{stage}": str(hit).lower() for stage, hit in outcome.cache_hits.items()})
        if outcome.status == "STOPPED":
            self.tracker.set_tags(run_id, {"early_stopped": "true", "stop_reason": outcome.stop_reason})
        if outcome.tags:
            self.tracker.set_tags(run_id, outcome.tags)
        if outcome.warnings:  # measured with less than asked (e.g. fewer held-out positions)
            self.tracker.set_tags(run_id, {"warning": "; ".join(outcome.warnings)})
        if outcome.artifact:
            self.tracker.log_artifact(run_id, fetch(outcome.artifact))  # from this node's copy of the storage
            self.tracker.set_tags(run_id, {"artifact": outcome.artifact})
        self.tracker.end(run_id, "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        run_id = self.tracker.child_ids.get(trial.trial_id)
        if run_id is None:
            return
        summary, path = trial_error(trial)
        self.tracker.set_tags(run_id, {"error": summary})
        if path:
            self.tracker.log_artifact(run_id, path)  # the whole traceback, worker side included
        self.tracker.end(run_id, "FAILED")


__all__ = ["SweepTracker", "TrialRunsCallback", "flatten", "trial_error"]
