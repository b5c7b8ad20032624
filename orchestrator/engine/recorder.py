"""The sweep's one Tune callback: every trial recorded as it ends, in this order, so that a driver killed at any
point loses nothing the next step needs:

1. its `TrialRecord` is appended to the sweep's `trials.jsonl`, and the current front to `front.json` (which
   trials that stop early read);
2. Optuna is told how it ended (`ConstrainedOptunaSearch.tell`), and the study published;
3. the tracker records its run (results, curves, files, status), then the front's hypervolume;
4. progress is reported.

`--resume` settles a trial the driver recorded but did not tell (`engine.recovery`). A tracking call that
fails never stops the sweep: the record is in `trials.jsonl`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from ray.tune import Callback, Stopper

from orchestrator.core.errors import no_space
from orchestrator.core.fronts import normalized_hypervolume
from orchestrator.engine.context import SweepContext
from orchestrator.engine.result import SweepProgress, trials_table
from orchestrator.io.records import RUNG, RungRecord, Status, TrialOutcome, TrialRecord
from orchestrator.io.sweep_files import STUDY_FILE, SweepFiles
from orchestrator.tracking.sweep_runs import SweepRuns

log = logging.getLogger("orchestrator")


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


def cut_tune_state(trial: Any, keep: set[str]) -> None:
    """What Tune keeps of an ended `trial` in the driver, cut: its running statistics of every number reported
    dropped, its last result reduced to the keys in `keep`."""
    meta = trial.run_metadata
    meta.last_result = {k: v for k, v in meta.last_result.items() if k in keep}
    meta.metric_analysis, meta.metric_n_steps = {}, {}


class Recorder(Callback):
    """Tune callback: records every trial (see the module docstring) and keeps the sweep's tally."""

    def __init__(self, ctx: SweepContext, runs: SweepRuns, *, files: SweepFiles | None, total: int,
                 reference: Mapping[str, float], previous: list[TrialRecord] | None = None,
                 progress: Callable[[SweepProgress], None] | None = None) -> None:
        self.ctx, self.runs, self.files, self.progress = ctx, runs, files, progress
        self.reference = dict(reference)
        self.records: dict[str, TrialRecord] = {r.trial_id: r for r in previous or []}
        self.total = total + len(self.records)
        self.running: set[str] = set()
        self.end_times: list[float] = []  # perf_counter() when each trial ended
        self.hypervolumes: list[tuple[int, float]] = []  # (trials ended, hypervolume) after each trial
        self.failed_now = 0  # trials of this run of the sweep that failed (not a resumed sweep's earlier ones)
        self.full: str | None = None  # a write found no space (the trial's or the sweep's own): the sweep stops
        self.tell: Callable[[str], None] | None = None  # tells the searcher a trial is recorded (`ConstrainedOptunaSearch.tell`)
        # successive halving's judgements (a resumed sweep's, even from before any trial ended)
        self.rungs: list[RungRecord] = files.read_rungs() if files is not None else []

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment's state: the driver-side hooks (a progress callback
        of yours may hold a lock, a queue or a socket) stay behind."""
        return {**self.__dict__, "progress": None, "tell": None}

    def _tracked(self, what: str, call: Callable[[], Any]) -> None:
        """A tracking call whose failure is one warning, never the sweep's end (the record is in trials.jsonl)."""
        try:
            call()
        except Exception as e:
            self.runs.tracker.failed(f"tracking: {what} failed ({type(e).__name__}: {e}); the sweep goes on")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._tracked("starting a trial's run", lambda: self.runs.start_trial(trial.trial_id, trial.config))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        """Validation accuracy reported during distillation (early stopping or fidelity on): a curve over steps;
        a judgement at a rung of successive halving: recorded in `rungs.jsonl`, which the trials rank against."""
        if RUNG in result and self.files is not None:
            self.rungs.append(RungRecord.from_report(trial.trial_id, result, self.ctx.objectives.names))
            self.files.write_rungs(self.rungs)
        if "distill_step" in result:
            step, values = int(result["distill_step"]), {"val_accuracy": result["val_accuracy"]}
            self._tracked("a trial's progress", lambda: self.runs.trial_progress(trial.trial_id, step, values))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = TrialOutcome.from_result(trial.last_result)
        if outcome is None:  # cannot happen unless the trial function changes; never let it pass as finished
            self.record(trial, Status.ERROR, None, "the trial ended without reporting its outcome")
        else:
            self.record(trial, outcome.status, outcome, None)
        self.release(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        summary, path = trial_error(trial)
        if no_space(summary):  # not a failure of its configuration: left unrecorded, it runs again on --resume
            self.full = self.full or summary
            return
        self.record(trial, Status.ERROR, None, summary, path)
        self.release(trial)

    def release(self, trial: Any) -> None:
        """Once a trial is recorded, what Tune keeps of it in the driver until the experiment ends is cut to what the
        sweep reads back: Tune's running statistics of every number the trial reported (its config's included: about
        17 KB a trial) are dropped, and its last result keeps its id and objectives (the outcome is in
        `trials.jsonl`). A thousand-trial sweep's driver then grows by the trials' records, not by Tune's analysis.
        A trial left unrecorded (no space) keeps everything: `SweepRun._record_late` may still need its outcome."""
        if trial.trial_id in self.records:
            cut_tune_state(trial, {"trial_id", "done", "training_iteration", *self.ctx.objectives.names})

    def record(self, trial: Any, status: Status, outcome: TrialOutcome | None, error: str | None,
               error_file: str | None = None) -> TrialRecord:
        """Record a trial that ended (see the module docstring); returns its record."""
        trial_id = trial.trial_id
        self.running.discard(trial_id)
        self.end_times.append(time.perf_counter())
        record = TrialRecord(trial_id=trial_id, status=status, params=dict(trial.config), run_name=self.runs.run_names.get(trial_id),
                             run_id=self.runs.child_ids.get(trial_id), outcome=outcome, error=error, error_file=error_file)
        self.records[trial_id] = record
        self.failed_now += status is Status.ERROR
        table = self.table()
        names = list(self.ctx.objectives.names)
        if self.files is not None:  # 1. recorded
            try:
                self.files.write_front(names, table.loc[table["pareto"], names].to_numpy(dtype=float))
                self.files.append_record(record)
            except OSError as e:
                if not no_space(e):
                    raise
                self.full = self.full or f"{type(e).__name__}: {e}"
                del self.records[trial_id]  # not recorded: runs again on --resume
                return record
        if self.tell is not None:  # 2. told
            self.tell(trial_id)
        if self.files is not None:
            self.files.publish(STUDY_FILE)  # a URI storage keeps the study as of the last ended trial
        self._tracked("recording a trial's run", lambda: self.runs.finish_trial(record))  # 3. tracked
        hv = normalized_hypervolume(table, self.reference, self.ctx.objectives)
        self.hypervolumes.append((len(self.records), hv))
        self._tracked("logging the hypervolume", lambda: self.runs.log({"hypervolume": hv}, step=len(self.records)))
        if self.progress is not None:  # 4. reported
            self.progress(SweepProgress(
                done=len(self.records), total=self.total, running=len(self.running), failed=int((table["status"] == "ERROR").sum()),
                front_size=int(table["pareto"].sum()), hypervolume=hv, trial_id=trial_id, status=status.value, outcome=outcome,
                stopped=int((table["status"] == "STOPPED").sum()), objectives=tuple(names), run_name=record.run_name or "",
                error=error or "", error_file=error_file or "",
            ))
        return record

    def table(self) -> pd.DataFrame:
        """Every trial recorded so far, as `SweepResult.trials` has them."""
        return trials_table(list(self.records.values()), self.ctx.objectives, self.ctx.constraints, tuple(self.ctx.config.params))


class FailureLimit(Stopper):
    """Tune stopper: the whole sweep stops once `limit` of its trials failed (`max_failures`; None: never).
    The trials still running are stopped as on Ctrl-C: closed in Optuna and the tracker, run again on --resume."""

    def __init__(self, recorder: Recorder, limit: int | None) -> None:
        self.recorder, self.limit = recorder, limit

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    @property
    def reached(self) -> bool:
        return self.limit is not None and self.recorder.failed_now >= self.limit

    def stop_all(self) -> bool:
        return self.reached or self.recorder.full is not None  # a full disk stops the sweep too
