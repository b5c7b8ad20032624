"""A sweep that stopped before its end, closed and continued.

What a stopped sweep leaves open, and who closes it:
- Ctrl-C or SIGTERM: Tune returns early; the driver tells the running trials' Optuna trials FAIL, marked
  `interrupted` (`close_running`), and closes their MLflow runs KILLED (`SweepTracker.end_sweep`).
- A killed driver (SIGKILL, a lost machine) closes nothing. `--resume` does it first: the study's RUNNING
  trials are told FAIL and marked the same way, and the MLflow parent run is reopened with its stale
  RUNNING child runs closed KILLED (`SweepTracker.reopen`).
Either way `requeue_interrupted` queues each interrupted configuration once more, so that the resumed sweep
runs it again (the sampler never proposed it by chance).

Example (an in-memory study):
    >>> import optuna
    >>> optuna.logging.set_verbosity(optuna.logging.WARNING)
    >>> study = optuna.create_study()
    >>> trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    >>> close_running(study) == [trial.number], requeue_interrupted(study), requeue_interrupted(study)
    (True, 1, 0)
    >>> again = study.ask()  # the queued trial: its suggestions are the interrupted trial's values
    >>> again.suggest_float("x", 0, 1) == trial.params["x"], again.user_attrs[RERUN_OF] == trial.number
    (True, True)
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

INTERRUPTED = "interrupted"  # an Optuna trial's user attribute: the sweep stopped before it ended
RERUN_OF = "rerun_of"  # on a queued trial: the number of the interrupted trial it runs again
TUNE_TRIAL_ID = "tune_trial_id"  # on every trial: the Tune trial it ran as (the key of its record in trials.jsonl)


def close_running(study: Any, recorded: Mapping[str, Mapping[str, Any]] | None = None,
                  objectives: Sequence[str] = ()) -> list[int]:
    """Settle every RUNNING trial of `study` (an `optuna.Study`): one the sweep recorded (its Tune trial id in
    `recorded`, the rows of trials.jsonl; a driver killed between the record and the tell) is told as the
    record says, with its `objectives`' values; any other is told FAIL, marked `interrupted`. Returns the
    numbers of the interrupted ones."""
    import optuna

    states = {"COMPLETED": optuna.trial.TrialState.COMPLETE, "STOPPED": optuna.trial.TrialState.PRUNED}
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        row = (recorded or {}).get(t.user_attrs.get(TUNE_TRIAL_ID, ""))
        if row is not None:
            state = states.get(row["status"], optuna.trial.TrialState.FAIL)
            values = [float(row[name]) for name in objectives] if state == optuna.trial.TrialState.COMPLETE else None
            study.tell(t.number, values, state=state)
            continue
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)  # Optuna has no public setter for another trial
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        numbers.append(t.number)
    return numbers


def requeue_interrupted(study: Any) -> int:
    """Queue once more the configuration of every interrupted trial not queued yet; how many were queued."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get(RERUN_OF) for t in trials}
    count = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in queued and t.params:
            study.enqueue_trial(t.params, user_attrs={RERUN_OF: t.number}, skip_if_exists=False)
            count += 1
    return count


def interrupted_numbers(study: Any) -> list[int]:
    """The numbers of the study's trials that the sweep stopped before they ended."""
    return [t.number for t in study.get_trials(deepcopy=False) if t.user_attrs.get(INTERRUPTED)]


@contextlib.contextmanager
def terminate_as_interrupt(signals: list[int]) -> Iterator[None]:
    """SIGTERM (a scheduler, `kill`, a Ray job stopped) ends the sweep as Ctrl-C does: Tune stops the trials
    and returns, and the sweep closes them and writes its front; the exit code is then 143, not 130.
    SIGINTs are recorded too. Outside the main thread (no signals there), nothing changes. Ray's `ray.init`
    installs SIGTERM handlers of its own (in Python and in its core worker): enter this after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        signals.append(signum)
        signal.raise_signal(signal.SIGINT)  # to whichever SIGINT handler is current: Tune's during the trials

    before_int = signal.getsignal(signal.SIGINT)

    def on_int(signum: int, frame: object) -> None:
        signals.append(signum)
        signal.default_int_handler(signum, frame)

    before_term = signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before_term)
        signal.signal(signal.SIGINT, before_int)
