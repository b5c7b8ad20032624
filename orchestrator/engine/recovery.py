"""A sweep that stopped before its end, closed and continued.

What a stopped sweep leaves open, and who closes it:
- Ctrl-C or SIGTERM: Tune returns early; the driver tells the running trials' Optuna trials FAIL, marked
  `interrupted` (`close_running`), and closes their runs KILLED (`tracking.sweep_runs.SweepRuns.end`).
- A killed driver (SIGKILL, a lost machine) closes nothing. `--resume` does it first: the study's RUNNING
  trials are told FAIL and marked the same way (or as its trials.jsonl recorded them), and the sweep's run
  is reopened with its stale RUNNING trial runs closed KILLED (`SweepRuns.reopen`).
Either way `requeue_interrupted` queues each interrupted configuration once more, so that the resumed sweep
runs it again (the sampler never proposed it by chance). `check_resume` says whether a sweep can be resumed
with a config; `recover_study` does the Optuna side before a resumed sweep's trials.

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
import logging
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence

import optuna

from orchestrator.config.load import load_config
from orchestrator.core.errors import ConfigError, show
from orchestrator.engine.context import SweepContext
from orchestrator.engine.search import TUNE_TRIAL_ID
from orchestrator.io.records import Status, TrialRecord
from orchestrator.io.sweep_files import CONFIG_FILE, TRIALS_FILE, SweepFiles
from orchestrator.tracking.sweep_runs import SweepRuns

log = logging.getLogger("orchestrator")

INTERRUPTED = "interrupted"  # an Optuna trial's user attribute: the sweep stopped before it ended
RERUN_OF = "rerun_of"  # on a queued trial: the number of the interrupted trial it runs again


def close_running(study: optuna.Study, recorded: Mapping[str, TrialRecord] | None = None,
                  objectives: Sequence[str] = ()) -> list[int]:
    """Settle every RUNNING trial of `study`: one the sweep recorded (its Tune trial id in `recorded`, the
    records of trials.jsonl; a driver killed between the record and the tell) is told as the record says, with
    its `objectives`' values; any other is told FAIL, marked `interrupted`. Returns the numbers of the
    interrupted ones."""
    states = {Status.COMPLETED: optuna.trial.TrialState.COMPLETE, Status.STOPPED: optuna.trial.TrialState.PRUNED}
    numbers = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        record = (recorded or {}).get(t.user_attrs.get(TUNE_TRIAL_ID, ""))
        if record is not None:
            state = states.get(record.status, optuna.trial.TrialState.FAIL)
            study.tell(t.number, record.objective_values(objectives) if state == optuna.trial.TrialState.COMPLETE else None,
                       state=state)
            continue
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)  # Optuna has no public setter for another trial
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        numbers.append(t.number)
    return numbers


def requeue_interrupted(study: optuna.Study) -> int:
    """Queue once more the configuration of every interrupted trial not queued yet; how many were queued."""
    trials = study.get_trials(deepcopy=False)
    queued = {t.user_attrs.get(RERUN_OF) for t in trials}
    count = 0
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get(INTERRUPTED) and t.number not in queued and t.params:
            study.enqueue_trial(t.params, user_attrs={RERUN_OF: t.number}, skip_if_exists=False)
            count += 1
    return count


def interrupted_numbers(study: optuna.Study) -> list[int]:
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
    finally:  # a handler set outside Python reads as None: the default then
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before_term is None else before_term)
        signal.signal(signal.SIGINT, signal.SIG_DFL if before_int is None else before_int)


def check_resume(ctx: SweepContext, sweep_id: str) -> list[TrialRecord]:
    """The trials of sweep `sweep_id` in the context's storage (its files brought to this node); `ConfigError`
    unless it can be resumed with this config (same objectives, searched params and pipeline, so that its
    Optuna study and its trials fit)."""
    cfg, store = ctx.config, ctx.storage
    files = SweepFiles(store, sweep_id)
    there = store.listdir("sweeps", sweep_id)
    if CONFIG_FILE not in there:
        known = store.listdir("sweeps")
        raise ConfigError(f"--resume {sweep_id}: no resumable sweep of that id under {store.location('sweeps')}; sweep ids "
                          f"there: {', '.join(known[-5:]) or 'none'} (give --storage of the original sweep)")
    files.pull(CONFIG_FILE)
    if TRIALS_FILE in there and cfg.study_storage is not None and \
            sweep_id not in optuna.study.get_all_study_names(storage=cfg.study_storage):  # (no trials: stopped before its study)
        raise ConfigError(f"--resume {sweep_id}: `study_storage` holds no study of that name; give the study_storage the "
                          "sweep ran with")
    earlier = load_config(files.path(CONFIG_FILE))
    if earlier.objectives != cfg.objectives:
        raise ConfigError(f"--resume {sweep_id}: `objectives` are {list(cfg.objectives)} here but {list(earlier.objectives)} "
                          "in that sweep (its Optuna study has those directions); resume with the objectives it started with")
    if earlier.pipeline != cfg.pipeline:
        raise ConfigError(f"--resume {sweep_id}: `pipeline` is {cfg.pipeline.to_raw()} here but {earlier.pipeline.to_raw()} in "
                          "that sweep; resume with the pipeline it started with")
    before, now = earlier.raw_params(), cfg.raw_params()
    for name in now:
        if before.get(name) != now[name]:
            raise ConfigError(f"--resume {sweep_id}: `params.{name}` is {show(now[name])} here but {show(before.get(name))} in "
                              "that sweep; resume with the search space it started with")
    return files.read_records()


def recover_study(ctx: SweepContext, files: SweepFiles, runs: SweepRuns, previous: list[TrialRecord]) -> None:
    """Before a resumed sweep's trials: its study's trials that a killed driver left RUNNING settled (told as
    trials.jsonl recorded them, or FAIL, interrupted), and every interrupted configuration queued to run again."""
    study = optuna.load_study(study_name=files.sweep_id, storage=files.study_url(ctx.config.study_storage))
    stale = close_running(study, {r.trial_id: r for r in previous}, ctx.objectives.names)
    queued = requeue_interrupted(study)
    if stale or queued:
        log.info("Optuna: %d trial(s) a killed driver left RUNNING told FAIL; %d interrupted configuration(s) queued to "
                 "run again", len(stale), queued)
    runs.log(tags={"optuna_stale_closed": str(len(stale)), "requeued": str(queued)})
