"""What a sweep records in a tracker, start to end: one parent run per sweep (named by the sweep id), one
child run per trial (`trial-0001`, ... in start order; a resumed sweep counts on), each trial's params,
description, results, curves, tags and files, and the sweep's own figures. Written once against the
`Tracker` interface, so the MLflow store and the in-memory tracker record alike.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.core.objectives import Objectives
from orchestrator.io.records import Status, TrialRecord
from orchestrator.io.artifact import read_manifest
from orchestrator.io.storage import fetch
from orchestrator.tracking.base import FAILED, FINISHED, KILLED, RUNNING, Tracker

PARENT_TAG = "mlflow.parentRunId"  # links a trial's run to its sweep's (the MLflow UI nests by it)
ALLOCATION = "allocation.json"  # a mixed-precision trial's widths, among its run's artifacts
ROLE_TAG = "orchestrator.role"  # "sweep" or "trial"
NOTE_TAG = "mlflow.note.content"  # a run's description (the MLflow UI shows it)
VIEW_TAG = "mlflow.sharedViewState."  # an experiment tag the MLflow UI reads for ?viewStateShareKey=<key>


def run_name(number: int) -> str:
    """A trial's run name: its number in the sweep, counted on across resumes.

        >>> run_name(7)
        'trial-0007'
    """
    return f"trial-{number:04d}"


def saved_view(objectives: Objectives, searched: list[str], sweep_id: str) -> dict[str, Any]:
    """The MLflow UI's runs table for one sweep (a shared view, keyed by the parent run id): its parent and
    trial runs, flat, best first in the first objective, with the objectives, their test scores, the
    searched params and the front tag as columns."""
    first = objectives[objectives.names[0]]
    columns = [f"metrics.`{name}`" for name in objectives.names]
    columns += [f"metrics.`test_{o.name}`" for o in objectives.held_out()]
    columns += [f"params.`{name}`" for name in searched] + ["tags.`pareto`", "tags.`recommended`"]
    return {"searchFilter": f"tags.sweep_id = '{sweep_id}'", "orderByKey": f"metrics.`{first.name}`",
            "orderByAsc": first.direction == "min", "selectedColumns": columns}


class SweepRuns:
    """The runs of one sweep in a tracker: its parent run, and a child run per trial tagged with `trial_tags`
    and described by `describe(params)`."""

    def __init__(self, tracker: Tracker, sweep_id: str, *, trial_tags: Mapping[str, str] | None = None,
                 describe: Callable[[Mapping[str, Any]], str] | None = None) -> None:
        self.tracker, self.sweep_id = tracker, sweep_id
        self.trial_tags = {**dict(trial_tags or {}), "sweep_id": sweep_id}
        self.describe = describe
        self.parent_id: str | None = None
        self.child_ids: dict[str, str] = {}  # trial id -> run id
        self.run_names: dict[str, str] = {}  # trial id -> its run's name (trial-0001, ...)
        self.last_number = 0  # the highest trial number of the sweep's runs so far
        self.stale_closed = 0  # trial runs a killed driver left RUNNING, closed KILLED by `reopen`
        self.setup_seconds = 0.0  # tracking time before the trials (the sweep's own run)
        self._open: set[str] = set()  # runs started and not yet ended
        self._steps: dict[str, int] = {}  # trial id -> the last distillation step it reported

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "describe": None}  # Tune pickles its callbacks, and this with them

    def start(self, *, params: Mapping[str, Any], tags: Mapping[str, str], description: str,
              metrics: Mapping[str, float], view: Mapping[str, Any] | None = None) -> str:
        """The sweep's parent run (it must be created: without it the sweep has nowhere to record)."""
        tags = {ROLE_TAG: "sweep", "sweep_id": self.sweep_id, **tags, NOTE_TAG: description}
        self.parent_id = self.tracker.create_run(self.sweep_id, tags, strict=True)
        self._open.add(self.parent_id)
        self.tracker.log(self.parent_id, params=params, metrics=metrics)
        if view is not None:
            self.tracker.set_experiment_tag(VIEW_TAG + self.parent_id, json.dumps(view))
        self.setup_seconds = self.tracker.seconds
        return self.parent_id

    def reopen(self, recorded: Mapping[str, TrialRecord]) -> str | None:
        """The sweep's parent run, RUNNING again (None when the tracker holds no run of this sweep), with
        `last_number` set to the highest trial number among its runs. A trial run its driver left RUNNING (it
        was killed) is finished from the sweep's record of the trial when there is one (`recorded`: by trial
        id; the driver died as it logged the run), else closed KILLED."""
        parents = self.tracker.find_runs({"sweep_id": self.sweep_id, ROLE_TAG: "sweep"})
        if not parents:
            return None
        self.parent_id = parents[0].run_id
        self.tracker.reopen_run(self.parent_id)
        self._open.add(self.parent_id)
        for run in self.tracker.find_runs({PARENT_TAG: self.parent_id}):
            self.last_number = max(self.last_number, int(run.tags.get("trial_number", 0)))
            if run.status == RUNNING:
                self._settle(run.run_id, recorded.get(run.tags.get("trial_id", "")))
        self.setup_seconds = self.tracker.seconds
        return self.parent_id

    def _settle(self, run_id: str, record: TrialRecord | None) -> None:
        if record is None:
            self.tracker.log(run_id, tags={"error": "the sweep's driver stopped before this trial finished; closed by "
                                                    "--resume, which runs its configuration again"})
            self.tracker.end_run(run_id, KILLED)
            self.stale_closed += 1
            return
        numbers = {k: v for k, v in (record.outcome.numbers() if record.outcome else {}).items() if v == v}
        self.tracker.log(run_id, metrics=numbers, tags={
            "recovered": "from the sweep's trials.jsonl by --resume (its driver was killed as it logged this run)",
            **({"error": record.error} if record.error else {})})
        self.tracker.end_run(run_id, FAILED if record.status is Status.ERROR else FINISHED)

    def log(self, metrics: Mapping[str, Any] | None = None, *, step: int = 0, tags: Mapping[str, str] | None = None) -> None:
        """Metrics and tags of the sweep's own run."""
        if self.parent_id is not None:
            self.tracker.log(self.parent_id, metrics=metrics, step=step, tags=tags)

    def start_trial(self, trial_id: str, params: Mapping[str, Any]) -> str | None:
        """The child run of the next trial (`trial-0001`, ...); None when the tracker could not make it."""
        if trial_id in self.child_ids:
            return self.child_ids[trial_id]
        self.last_number += 1
        name = run_name(self.last_number)
        tags = {PARENT_TAG: self.parent_id, ROLE_TAG: "trial", "trial_id": trial_id, "trial_number": str(self.last_number),
                **self.trial_tags, **({NOTE_TAG: self.describe(params)} if self.describe is not None else {})}
        run_id = self.tracker.create_run(name, tags)
        if run_id is None:
            return None
        self.child_ids[trial_id], self.run_names[trial_id] = run_id, name
        self._open.add(run_id)
        self.tracker.log(run_id, params=params)
        return run_id

    def trial_progress(self, trial_id: str, step: int, values: Mapping[str, float]) -> None:
        """Figures a trial reported while it distils (early stopping's validation scores): curves over steps."""
        run_id = self.child_ids.get(trial_id)
        if run_id is not None:
            self._steps[trial_id] = step
            self.tracker.log(run_id, metrics=values, step=step)

    def finish_trial(self, record: TrialRecord) -> None:
        """A trial's results, curves, tags and files, and its run ended: FINISHED, or FAILED with its cause."""
        run_id = self.child_ids.get(record.trial_id)
        if run_id is None:  # the tracker could not make its run when it started
            return
        outcome = record.outcome
        if outcome is None:
            self.tracker.log(run_id, tags={"error": record.error or "the trial ended without reporting its outcome"})
            if record.error_file:
                self.tracker.log_artifact(run_id, record.error_file)  # the whole traceback, worker side included
            self._end(run_id, FAILED)
            return
        # at the last step reported, so that the final values are a metric's latest
        last = max([self._steps.pop(record.trial_id, 0), *(int(p[-1][0]) for p in outcome.curves.values() if p)])
        tags = {**outcome.tags, **({"pareto": "false"} if outcome.status is Status.COMPLETED else {})}  # the front: at the end
        tags.update({f"cache_hit.{stage.value}": str(hit).lower() for stage, hit in outcome.cache_hits.items()})
        if outcome.status is Status.STOPPED:
            tags.update({"early_stopped": "true", "stop_reason": outcome.stop_reason or ""})
        if outcome.warnings:  # measured with less than asked (e.g. fewer held-out positions)
            tags["warning"] = "; ".join(outcome.warnings)
        if outcome.artifact:
            self.tracker.log_artifact(run_id, fetch(outcome.artifact))  # from this node's copy of the storage
            tags["artifact"] = outcome.artifact
            self._log_allocation(run_id, fetch(outcome.artifact))
        for location in outcome.exports.values():  # its files for other runtimes (e.g. model.onnx), beside model.orc
            self.tracker.log_artifact(run_id, fetch(location))
        self.tracker.log(run_id, metrics=outcome.numbers(), step=last, curves=outcome.curves, tags=tags)
        self._end(run_id, FINISHED)

    def _log_allocation(self, run_id: str, artifact: Path) -> None:
        """A mixed-precision model's allocation (tensor, bits, stored bits, score), from its artifact's manifest, as
        the run's `allocation.json` (MLflow's table form: columns and data)."""
        try:
            allocation = read_manifest(artifact).get("allocation")
        except ValueError:  # a file of another format (a test's stand-in) holds no allocation
            return
        if allocation:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / ALLOCATION
                path.write_text(json.dumps(allocation, indent=1))
                self.tracker.log_artifact(run_id, path)

    def _end(self, run_id: str, status: str) -> None:
        self.tracker.end_run(run_id, status)
        self._open.discard(run_id)

    def end(self, status: str) -> None:
        """End the parent run with `status`, and as KILLED any trial run still open (a sweep stopped mid-trial)."""
        for run_id in sorted(self._open - {self.parent_id}):
            self.tracker.log(run_id, tags={"error": "the sweep stopped before this trial finished"})
            self._end(run_id, KILLED)
        if self.parent_id is not None:
            self._end(self.parent_id, status)
