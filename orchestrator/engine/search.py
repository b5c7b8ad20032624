"""The search: the validated space as an Optuna define-by-run function, and Ray Tune's Optuna searcher made to
tell Optuna what the sweep measured (constraints, early stops), only once the sweep has recorded it, and
never to spend a trial on a configuration that already completed; and the fan-out (`fanout`): after a trial
trains a new student, more trials that compress that student other ways, chosen by the sampler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from orchestrator.config.samplers import make_sampler
from orchestrator.core.space import Choice, Fixed, ObjectiveConstraints, ParamSpec, searched_grid
from orchestrator.engine.context import SweepContext
from orchestrator.io.records import STUDENT_TAG, Status, TrialOutcome
from orchestrator.io.sweep_files import SweepFiles

STUDENT = "student"  # an Optuna trial's user attribute: the cache key of the student it compressed
FANOUT_OF = "fanout_of"  # an Optuna trial's user attribute: the Tune trial whose new student it compresses another way
TUNE_TRIAL_ID = "tune_trial_id"  # an Optuna trial's user attribute: the Tune trial it ran as (the key of its record in trials.jsonl)


class DefineByRun:
    """Optuna define-by-run space: suggests every searched parameter and returns the fixed ones as
    constants (so they are still logged per trial). A class, not a closure: Tune pickles its searcher."""

    def __init__(self, params: Mapping[str, ParamSpec]) -> None:
        self.params = dict(params)

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        fixed = {}
        for name, spec in self.params.items():
            if isinstance(spec, Fixed):
                fixed[name] = spec.value
            elif isinstance(spec, Choice):
                trial.suggest_categorical(name, list(spec.choices))
            elif spec.integer:
                trial.suggest_int(name, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
            else:
                trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
        return fixed


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that records a finished trial's constraint values on its Optuna trial
    (`Trial.set_constraint`, read by TPE and NSGA-II) just before telling the study, tells a trial that
    stopped early as PRUNED (Ray's OptunaSearch would tell it COMPLETE with no values, which Optuna refuses),
    and never spends a trial on a configuration that already completed: the sampler is told that
    configuration's figures again and asked for another (at most `max_asks` times per trial; a space
    with nothing new left to sample then runs the repeat).

    A trial's end is told to Optuna only once the sweep has recorded it (`engine.recorder.Recorder` calls
    `tell`): a driver killed in between leaves the trial RUNNING in the study, which `--resume` then settles
    from the record (`engine.recovery`). Each Optuna trial carries its Tune trial id (`TUNE_TRIAL_ID`)."""

    max_asks = 100

    def __init__(self, *args: Any, limits: ObjectiveConstraints, fanout: int = 1, student_params: Sequence[str] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self.fanout, self.student_params = fanout, tuple(student_params)
        self.repeats_skipped = 0  # configurations the sampler proposed again and was answered from the study
        self.fanned_out = 0  # trials queued to compress a new student other ways (`fanout`)
        # the students this sweep has fanned out already (a resumed sweep's are in its study)
        self._students = {t.user_attrs[STUDENT] for t in self._ot_study.get_trials(deepcopy=False) if STUDENT in t.user_attrs}
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
        if outcome is not None and outcome.status is Status.STOPPED:
            result = None  # no objective values: PRUNED
        elif outcome is not None and ot_trial is not None:
            for name, value in self._limits.violations(outcome.metrics).items():
                ot_trial.set_constraint(name, value)
            self._fan_out(ot_trial, trial_id, outcome.tags.get(STUDENT_TAG))
        super().on_trial_complete(trial_id, result, error)
        self._ot_trials.pop(trial_id, None)  # told: Ray's OptunaSearch would keep it for the whole sweep

    def _fan_out(self, ot_trial: optuna.Trial, trial_id: str, student_key: str | None) -> None:
        """The first trial of the sweep with its student (trained now, or reused from storage): `fanout - 1` trials
        queued with its student's params fixed, the sampler choosing the rest (how it is compressed); they reuse
        the student from the cache. Each Optuna trial carries its student's key (`STUDENT`)."""
        if student_key is None:
            return
        ot_trial.set_user_attr(STUDENT, student_key)
        if self.fanout == 1 or student_key in self._students:
            return
        self._students.add(student_key)
        student = {name: ot_trial.params[name] for name in self.student_params if name in ot_trial.params}
        for _ in range(self.fanout - 1):
            self._ot_study.enqueue_trial(student, user_attrs={FANOUT_OF: trial_id})
            self.fanned_out += 1


def make_searcher(ctx: SweepContext, files: SweepFiles, resume: str | None) -> ConstrainedOptunaSearch:
    """OptunaSearch over the space, its study named by the sweep id in `study_storage` or in the sweep's
    `optuna.db` (Optuna's own tools read it, and a later sweep resumes it):
    optuna.load_study(study_name=<sweep id>, storage="sqlite:///<storage>/sweeps/<sweep id>/optuna.db")."""
    cfg = ctx.config
    study_url, sweep_id = files.study_url(cfg.study_storage), files.sweep_id
    sampler_seed = cfg.search_seed
    if resume:  # a sampler's random state is not stored: a fresh stream, or it would redo the first trials
        sampler_seed += len(optuna.load_study(study_name=sweep_id, storage=study_url).trials)
    return ConstrainedOptunaSearch(
        space=DefineByRun(cfg.params),
        metric=list(ctx.objectives.names),
        mode=ctx.objectives.directions(),
        sampler=make_sampler(cfg.sampler, seed=sampler_seed, grid=searched_grid(cfg.params),
                             population_size=cfg.population_size, options=cfg.sampler_options),
        limits=ctx.constraints,
        fanout=cfg.fanout,
        student_params=cfg.student_params,
        storage=optuna.storages.RDBStorage(study_url),
        study_name=sweep_id,
        points_to_evaluate=None if resume else [dict(p) for p in cfg.initial_points] or None,
    )
