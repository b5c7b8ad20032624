"""The sweep's Tune-side bookkeeping: a searcher that tells Optuna constraints and early stops, and a
callback that records every trial as it ends (the trials table, the front file early stopping reads,
the hypervolume curve, progress)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from ray.tune import Callback, Stopper
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config import ConstraintsConfig
from orchestrator.outcome import TrialOutcome
from orchestrator.recovery import TUNE_TRIAL_ID
from orchestrator.results import SweepProgress, front_of, normalized_hypervolume
from orchestrator.space import ObjectiveConstraints
from orchestrator.sweep_files import STUDY_FILE, TRIALS_FILE, SweepFiles
from orchestrator.tracking import trial_error


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that records a finished trial's constraint values on its Optuna trial
    (`Trial.set_constraint`, read by TPE and NSGA-II) just before telling the study, tells a trial that
    stopped early as PRUNED (Ray's OptunaSearch would tell it COMPLETE with no values, which Optuna refuses),
    and never spends a trial on a configuration that already completed: the sampler is told that
    configuration's figures again and asked for another (at most `max_asks` times per trial; a space
    with nothing new left to sample then runs the repeat).

    A trial's end is told to Optuna only once the sweep has recorded it (`TrialMonitor` calls `tell`):
    a driver killed in between leaves the trial RUNNING in the study, which `--resume` then settles from the
    record (`orchestrator.recovery`). Each Optuna trial carries its Tune trial id (`TUNE_TRIAL_ID`)."""

    max_asks = 100

    def __init__(self, *args: Any, limits: ObjectiveConstraints, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self.repeats_skipped = 0  # configurations the sampler proposed again and was answered from the study
        self._ended: dict[str, tuple[dict | None, bool]] = {}  # trial id -> (result, error), not yet told

    def suggest(self, trial_id: str) -> dict | None:
        self.tell_all()  # a trial whose record failed still reaches the sampler before the next suggestion
        for _ in range(self.max_asks):
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials.get(trial_id)
            if config is None or ot_trial is None:
                return config
            ot_trial.set_user_attr(TUNE_TRIAL_ID, trial_id)
            earlier = self._completed_with(ot_trial.params, ot_trial.number)
            if earlier is None:
                return config
            for name, value in earlier.constraints.items():  # what the sampler learnt the first time, again
                ot_trial.set_constraint(name, value)
            self._ot_study.tell(ot_trial, earlier.values)
            del self._ot_trials[trial_id]
            self.repeats_skipped += 1
        return config

    def _completed_with(self, params: Mapping[str, Any], number: int) -> Any:
        """The study's completed trial with exactly these parameters (None if there is none)."""
        import optuna

        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if t.number != number and t.params == params:
                return t
        return None

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tune calls this before the callbacks: kept until the sweep has recorded the trial (`tell`)."""
        self._ended[trial_id] = (result, error)

    def tell_all(self) -> None:
        for trial_id in list(self._ended):
            self.tell(trial_id)

    def tell(self, trial_id: str) -> None:
        """Tell Optuna how trial `trial_id` ended (once; nothing if Tune has not ended it)."""
        if trial_id not in self._ended:
            return
        result, error = self._ended.pop(trial_id)
        ot_trial = self._ot_trials.get(trial_id)
        outcome = TrialOutcome.from_result(result)
        if outcome is not None and outcome.status == "STOPPED":
            result = None  # no objective values: PRUNED
        elif outcome is not None and ot_trial is not None:
            for name, value in self._limits.violations(outcome.metrics).items():
                ot_trial.set_constraint(name, value)
        super().on_trial_complete(trial_id, result, error)


class TrialMonitor(Callback):
    """Tune callback: records every trial's config, metrics and outcome (COMPLETED, STOPPED early or
    ERROR), logs the front's hypervolume to the parent run after each trial, writes the front where
    trials that stop early read it (`files`), and reports progress."""

    def __init__(
        self, total: int, progress: Callable[[SweepProgress], None] | None, *, reference: Mapping[str, float],
        constraints: ConstraintsConfig, log_hypervolume: Callable[[float, int], None], files: SweepFiles | None = None,
        run_ids: dict[str, str] | None = None, previous: list[dict[str, Any]] | None = None,
        param_names: tuple[str, ...] = (), run_names: dict[str, str] | None = None,
    ) -> None:
        """`files` get `front.json`, a line of `trials.jsonl` and the Optuna study after each trial; `run_ids` maps trial ids to MLflow runs as they start;
        `previous` are the rows of the sweep being resumed."""
        self.param_names = param_names  # the table's param columns before any trial ends
        self.files = files
        self.run_ids = run_ids if run_ids is not None else {}
        self.total = total
        self.constraints = ObjectiveConstraints(constraints)
        self.progress = progress
        self.reference = dict(reference)
        self.objectives = list(reference)  # the objectives, in the sweep's order
        self.log_hypervolume = log_hypervolume
        self.rows: dict[str, dict[str, Any]] = {row["trial_id"]: row for row in previous or []}
        self.total += len(self.rows)
        self.running: set[str] = set()
        self.end_times: list[float] = []  # perf_counter() when each trial ended
        self.hypervolumes: list[tuple[int, float]] = []  # (trials ended, hypervolume) after each trial
        self.run_names = run_names if run_names is not None else {}  # trial id -> its MLflow run's name (trial-0001)
        self.failed_now = 0  # trials of this run of the sweep that failed (not a resumed sweep's earlier ones)
        self.tell: Callable[[str], None] | None = None  # tells the searcher a trial is recorded (`ConstrainedOptunaSearch.tell`)

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles its callbacks with the experiment's state: the driver-side hooks (a progress callback
        of yours may hold a lock, a queue or a socket) stay behind."""
        return {**self.__dict__, "progress": None, "log_hypervolume": lambda hv, n: None, "tell": None}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        outcome = TrialOutcome.from_result(trial.last_result)
        if outcome is None:  # cannot happen unless the trial function changes; never let it pass as finished
            self._ended(trial, "ERROR", None, "the trial ended without reporting its outcome")
        else:
            self._ended(trial, outcome.status, outcome, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        summary, path = trial_error(trial)
        self._ended(trial, "ERROR", None, summary, path)

    def _ended(self, trial: Any, status: str, outcome: TrialOutcome | None, error: str | None, error_file: str | None = None) -> None:
        self.running.discard(trial.trial_id)
        self.end_times.append(time.perf_counter())
        params = dict(trial.config)
        row = {"trial_id": trial.trial_id, "run_name": self.run_names.get(trial.trial_id), "status": status,
               "run_id": self.run_ids.get(trial.trial_id), **params,
               **(outcome.row() if outcome is not None else {}), "error": error}
        self.rows[trial.trial_id] = row
        if status == "ERROR":
            self.failed_now += 1
        table = self.table()
        if self.files is not None:
            self.files.write_front(self.objectives, table.loc[table["pareto"], self.objectives].to_numpy(dtype=float))
            self.files.append_line(TRIALS_FILE, json.dumps(row, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
        if self.tell is not None:  # recorded first, then told: a driver killed in between leaves nothing lost
            self.tell(trial.trial_id)
        if self.files is not None:
            self.files.publish(STUDY_FILE)  # a URI storage keeps the study as of the last ended trial
        hv = normalized_hypervolume(table, self.reference)
        self.hypervolumes.append((len(self.rows), hv))
        self.log_hypervolume(hv, len(self.rows))
        if self.progress is not None:
            self.progress(SweepProgress(
                done=len(self.rows), total=self.total, running=len(self.running),
                failed=int((table["status"] == "ERROR").sum()), front_size=int(table["pareto"].sum()),
                hypervolume=hv, trial_id=trial.trial_id, status=status, outcome=outcome,
                stopped=int((table["status"] == "STOPPED").sum()), objectives=tuple(self.objectives),
                run_name=self.run_names.get(trial.trial_id, ""), error=error or "", error_file=error_file or "",
            ))

    def table(self) -> pd.DataFrame:
        trials = pd.DataFrame(list(self.rows.values()))
        if trials.empty:
            trials = pd.DataFrame(columns=["trial_id", "run_name", "status", "run_id", *self.param_names, *self.objectives, "artifact", "error"])
        for column in (*self.objectives, *self.constraints.names, "artifact"):  # the table's own figures
            if column not in trials:
                trials[column] = np.nan if column != "artifact" else None
        done = trials["status"] == "COMPLETED"
        trials["feasible"] = pd.Series([
            bool(d) and self.constraints.feasible(row) for d, (_, row) in zip(done, trials.iterrows())
        ], index=trials.index, dtype=bool)
        trials["pareto"] = front_of(trials, self.objectives)
        return trials




class FailureLimit(Stopper):
    """Tune stopper: the whole sweep stops once `limit` of its trials failed (`max_failures`; None: never).
    The trials still running are stopped as on Ctrl-C: closed in Optuna and MLflow, run again on --resume."""

    def __init__(self, monitor: TrialMonitor, limit: int | None) -> None:
        self.monitor, self.limit = monitor, limit

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    @property
    def reached(self) -> bool:
        return self.limit is not None and self.monitor.failed_now >= self.limit

    def stop_all(self) -> bool:
        return self.reached
