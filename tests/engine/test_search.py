import optuna
import pytest

from orchestrator import load_config
from orchestrator.config import ConstraintsConfig
from orchestrator.config.samplers import make_sampler
from orchestrator.core.objectives import OBJECTIVES, Objectives
from orchestrator.core.space import ObjectiveConstraints, searched_grid
from orchestrator.engine.search import ConstrainedOptunaSearch, DefineByRun
from orchestrator.io.records import TrialOutcome


def _sample(sampler_name, seed, n=6):
    cfg = load_config(None, overrides={
        "params.bits": {"choices": [2, 4, 8]}, "params.sparsity": {"low": 0.0, "high": 0.9},
        "params.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "params.layers": {"low": 1, "high": 3},
        "params.optimizer": "sgd",
    })
    space = DefineByRun(cfg.params)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler(sampler_name, seed=seed))
    out = []
    for i in range(n):
        trial = study.ask()
        fixed = space(trial)
        out.append({**trial.params, **fixed})
        study.tell(trial, [i / n, 1 - i / n, 1.0])
    return out


def test_fixed_params_come_back_as_constants_and_searched_ones_are_suggested():
    points = _sample("random", 0)
    assert all(p["optimizer"] == "sgd" and p["width"] == 64 for p in points)
    assert {p["bits"] for p in points} <= {2, 4, 8}
    assert all(0 <= p["sparsity"] <= 0.9 and 1 <= p["layers"] <= 3 for p in points)


def test_same_seed_same_sequence_and_different_seed_differs():
    for name in ("tpe", "nsga2", "random"):
        assert _sample(name, 3) == _sample(name, 3)
        assert _sample(name, 3) != _sample(name, 4)


def test_the_default_objectives_are_accuracy_size_and_latency_and_the_registry_gives_their_directions():
    assert load_config(None).objectives == ("accuracy", "size_mb", "latency_ms")
    assert Objectives(["accuracy", "size_mb", "latency_ms"]).directions() == ["max", "min", "min"]
    assert {name: o.direction for name, o in OBJECTIVES.items()} == {
        "accuracy": "max", "perplexity": "min", "size_mb": "min", "latency_ms": "min", "latency_p95_ms": "min",
        "peak_memory_mb": "min", "throughput_tokens_per_s": "max", "decode_tokens_per_s": "max"}


def test_constraints_are_computed_from_objective_values_and_reach_the_sampler():
    def point(accuracy, size_mb, latency_ms):
        return {"accuracy": accuracy, "size_mb": size_mb, "latency_ms": latency_ms}

    limits = ConstraintsConfig(max_size_mb=0.05, max_latency_ms=None, min_accuracy=0.3)
    c = ObjectiveConstraints(limits.values)
    assert c.violations(point(0.25, 0.07, 9.0)) == {"max_size_mb": pytest.approx(0.02), "min_accuracy": pytest.approx(0.05)}
    assert c.feasible(point(0.31, 0.05, 9.0)) and not c.feasible(point(0.31, 0.051, 9.0))
    assert ObjectiveConstraints(ConstraintsConfig().values).violations(point(0.0, 9.0, 9.0)) == {}
    # any registered objective takes a limit either way
    other = ObjectiveConstraints(ConstraintsConfig(max_peak_memory_mb=10.0, min_decode_tokens_per_s=100.0).values)
    assert other.violations({"peak_memory_mb": 12.0, "decode_tokens_per_s": 150.0}) == {
        "max_peak_memory_mb": pytest.approx(2.0), "min_decode_tokens_per_s": pytest.approx(-50.0)}
    # TPE steers by the values a trial records; an infeasible trial is never among its "good" trials
    from optuna.samplers._tpe.sampler import _get_infeasible_trial_score

    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=make_sampler("tpe", seed=0))
    trial = study.ask()
    for name, value in c.violations(point(0.25, 0.07, 1.0)).items():  # what the sweep's searcher does before tell
        trial.set_constraint(name, value)
    study.tell(trial, [0.25, 0.07, 1.0])
    assert study.trials[0].constraints == {"max_size_mb": pytest.approx(0.02), "min_accuracy": pytest.approx(0.05)}
    assert _get_infeasible_trial_score(study.trials[0]) == pytest.approx(0.07)


def _grid_cfg(**extra):
    return load_config(None, overrides={
        "sampler": "grid", "trials": 12, "params.bits": {"choices": [4, 8]}, "params.sparsity": {"low": 0.0, "high": 0.5, "step": 0.25},
        "params.layers": {"low": 1, "high": 2}, **extra,
    })


def _run_grid(cfg, n):
    space = DefineByRun(cfg.params)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"],
                                sampler=make_sampler("grid", seed=cfg.seed, grid=searched_grid(cfg.params)))
    out = []
    for _ in range(n):
        trial = study.ask()
        space(trial)
        out.append((trial.params["bits"], trial.params["sparsity"], trial.params["layers"]))
        study.tell(trial, [0.5, 1.0, 1.0])
    return out


def test_grid_visits_every_combination_once_in_a_seeded_order():
    cfg = _grid_cfg()
    points = _run_grid(cfg, 12)
    assert sorted(points) == sorted((b, s, l) for b in (4, 8) for s in (0.0, 0.25, 0.5) for l in (1, 2))
    assert _run_grid(cfg, 12) == points
    assert _run_grid(_grid_cfg(seed=1), 12) != points


def test_nsga2_takes_its_population_size():
    sampler = make_sampler("nsga2", seed=0, population_size=8)
    assert sampler._population_size == 8
    assert make_sampler("nsga2", seed=0)._population_size == 50  # Optuna's default


def test_sampler_options_reach_the_optuna_sampler():
    cfg = load_config(None, overrides={"sampler_options": {"n_startup_trials": 3, "multivariate": True}})
    sampler = make_sampler("tpe", seed=0, options=cfg.sampler_options)
    assert sampler._n_startup_trials == 3 and sampler._multivariate


def test_a_configuration_that_completed_is_told_again_not_run_again():
    cfg = load_config(None, overrides={"params.bits": {"choices": [4, 8]}, "constraints": {"max_size_mb": 0.5}})
    search = ConstrainedOptunaSearch(
        space=DefineByRun(cfg.params), metric=["accuracy", "size_mb"], mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0), limits=ObjectiveConstraints(cfg.constraints.values),
    )
    search.max_asks = 20

    def result(accuracy, size_mb):
        return TrialOutcome(status="COMPLETED", metrics={"accuracy": accuracy, "size_mb": size_mb}).report(["accuracy", "size_mb"])

    first = search.suggest("t1")
    search.on_trial_complete("t1", result=result(0.5, 1.0))
    second = search.suggest("t2")
    assert second["bits"] != first["bits"]  # only two configurations: the other one, whatever the sampler drew
    search.on_trial_complete("t2", result=result(0.4, 0.25))
    third = search.suggest("t3")  # nothing new left: after max_asks the repeat runs
    assert third["bits"] in (4, 8) and search.repeats_skipped >= 20
    told = [t for t in search._ot_study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(told) >= 2 + 20
    for t in told[2:]:  # every repeat was told what its first run measured, the missed size limit included
        earlier = told[0] if t.params == told[0].params else told[1]
        assert t.values == earlier.values and t.constraints == earlier.constraints
    assert told[0].constraints == {"max_size_mb": 0.5}


def test_fanout_queues_trials_that_keep_a_new_students_params_and_sample_the_rest():
    from orchestrator.engine.search import FANOUT_OF, STUDENT
    from orchestrator.io.records import STUDENT_TAG
    from orchestrator.io.records import CacheStage

    cfg = load_config(None, overrides={"fanout": 3, "params.bits": {"choices": [2, 3, 4, 8]}, "params.sparsity": {"low": 0.0, "high": 0.9},
                                       "params.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "params.width": {"choices": [32, 64]}})
    storage = optuna.storages.InMemoryStorage()

    def searcher():
        return ConstrainedOptunaSearch(
            space=DefineByRun(cfg.params), metric=["accuracy", "size_mb"], mode=["max", "min"], storage=storage, study_name="s",
            sampler=optuna.samplers.RandomSampler(seed=0), limits=ObjectiveConstraints({}), fanout=cfg.fanout,
            student_params=cfg.student_params)

    def end(search, trial_id, student, hit):
        outcome = TrialOutcome(status="COMPLETED", metrics={"accuracy": 0.5, "size_mb": 1.0}, tags={STUDENT_TAG: student},
                               cache_hits={CacheStage.DISTILL: hit})
        search.on_trial_complete(trial_id, result=outcome.report(["accuracy", "size_mb"]))
        search.tell(trial_id)

    search = searcher()
    first = search.suggest("t1")
    end(search, "t1", "student-a", False)
    fans = [search.suggest(f"f{i}") for i in range(2)]
    for i, fan in enumerate(fans):
        assert {k: fan[k] for k in ("lr", "width")} == {k: first[k] for k in ("lr", "width")}  # the same student
        end(search, f"f{i}", "student-a", True)  # its own student again: no further fan-out
    assert (fans[0]["sparsity"], fans[0]["bits"]) != (fans[1]["sparsity"], fans[1]["bits"])  # compressed other ways
    assert search.fanned_out == 2
    study = search._ot_study
    assert [t.user_attrs.get(FANOUT_OF) for t in study.trials] == [None, "t1", "t1"]
    assert {t.user_attrs[STUDENT] for t in study.trials} == {"student-a"}
    fresh = search.suggest("t2")
    assert (fresh["lr"], fresh["width"]) != (first["lr"], first["width"])  # nothing queued: the sampler's own proposal
    end(search, "t2", "student-a", True)  # a student this sweep has fanned out already (e.g. a resumed sweep's): not again
    assert search.fanned_out == 2 and searcher()._students == {"student-a"}  # a resumed searcher reads them from the study
