"""search_spaces/smoke.yaml end to end through real Ray Tune + Train, Optuna and a SQLite MLflow store."""

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow.tracking import MlflowClient

from orchestrator import ConfigError, Sweep, cli, load_model
from orchestrator.core.measure import score_lm
from orchestrator.core.pareto import pareto_mask
from orchestrator.tasks.char_lm import CharData
from orchestrator.training.teacher_outputs import pool_precision

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
METRICS = ["accuracy", "perplexity", "test_accuracy", "test_perplexity", "eval_positions", "size_mb", "latency_ms", "latency_p95_ms", "params", "compression_ratio", "accuracy_retained"]
PARAMS = ["beta", "lambda", "temperature", "sparsity", "bits", "optimizer", "lr", "layers", "width", "heads"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = Sweep.from_yaml(SMOKE, storage=str(root / "runs"), tracking_uri=uri).run()
    return result, root, uri


def test_every_trial_completes_with_measured_metrics(sweep):
    result, _, _ = sweep
    assert len(result.trials) == 3
    assert (result.trials["status"] == "COMPLETED").all(), result.trials["error"].tolist()
    for m in METRICS:
        assert result.trials[m].notna().all() and (result.trials[m] > 0).all(), m
    assert result.teacher.cache_hit is False
    assert (result.trials["cache_hit_teacher"] == 0).all() and (result.trials["cache_hit_teacher_outputs"] == 0).all()


def test_mlflow_holds_a_parent_and_one_child_per_trial(sweep):
    result, _, uri = sweep
    client = MlflowClient(uri)
    runs = client.search_runs([result.experiment_id])
    parents = [r for r in runs if r.data.tags.get("orchestrator.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.run_id]
    assert [p.info.run_id for p in parents] == [result.run_id]
    assert parents[0].info.status == "FINISHED"
    assert sorted(c.data.tags["trial_id"] for c in children) == sorted(result.trials["trial_id"])
    for child in children:
        assert child.info.status == "FINISHED"
        assert set(METRICS) <= set(child.data.metrics)
        assert set(PARAMS) <= set(child.data.params)
        row = result.trials.set_index("trial_id").loc[child.data.tags["trial_id"]]
        assert child.data.metrics["accuracy"] == pytest.approx(row["accuracy"])
        assert child.data.params["bits"] == str(row["bits"])
        on_front = child.data.tags["pareto"] == "true"
        assert [a.path for a in client.list_artifacts(child.info.run_id)] == (["model", "model.orc"] if on_front else ["model.orc"])
        assert child.info.run_name == row["run_name"] and child.info.run_name.startswith("trial-000")
    assert sorted(c.info.run_name for c in children) == ["trial-0001", "trial-0002", "trial-0003"]
    parent_files = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"pareto.csv", "pareto.html", "pareto.png", "trials.csv", "hypervolume.png"} <= parent_files
    assert parents[0].data.metrics["trials_completed"] == 3
    tagged = {c.data.tags["trial_id"] for c in children if c.data.tags.get("pareto") == "true"}
    assert tagged == set(result.pareto["trial_id"])
    recommended = [c.data.tags["trial_id"] for c in children if c.data.tags.get("recommended") == "true"]
    assert recommended == [result.recommend()["trial_id"]]
    assert parents[0].data.tags["recommended_trial"] == result.recommend()["run_name"]
    assert recommended[0] in tagged


def test_the_optuna_study_is_stored_next_to_the_sweep(sweep):
    result, root, _ = sweep
    sweep_id = MlflowClient(result.tracking_uri).get_run(result.run_id).data.tags["sweep_id"]
    db = root / "runs" / "sweeps" / sweep_id / "optuna.db"
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{db}")
    finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == 3
    assert sorted(t.values[0] for t in finished) == sorted(result.trials["accuracy"])
    front = {tuple(t.values) for t in study.best_trials}
    assert front == {tuple(v) for v in result.pareto[["accuracy", "size_mb", "latency_ms"]].to_numpy()}


def test_hypervolume_is_logged_after_every_trial_and_matches_optuna(sweep):
    from optuna._hypervolume import compute_hypervolume

    result, _, uri = sweep
    history = MlflowClient(uri).get_metric_history(result.run_id, "hypervolume")
    assert sorted(m.step for m in history) == [1, 2, 3]
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert values == sorted(values)  # a front's hypervolume never shrinks
    size, latency = result.teacher.size_bytes / 1e6, result.teacher.latency_ms
    pts = result.trials[["accuracy", "size_mb", "latency_ms"]].to_numpy() * [-1, 1, 1]
    ref = np.array([0.0, size, latency])
    inside = pts[(pts < ref).all(1)]
    expected = compute_hypervolume(inside, ref) / (size * latency) if len(inside) else 0.0
    assert values[-1] == pytest.approx(expected) == pytest.approx(result.hypervolume)


def test_front_is_non_empty_and_no_trial_dominates_it(sweep):
    result, _, _ = sweep
    front = result.pareto
    assert len(front) >= 1
    everyone = result.trials[["accuracy", "size_mb", "latency_ms"]].to_numpy()
    for point in front[["accuracy", "size_mb", "latency_ms"]].to_numpy():
        better_eq = (everyone[:, 0] >= point[0]) & (everyone[:, 1] <= point[1]) & (everyone[:, 2] <= point[2])
        strictly = (everyone[:, 0] > point[0]) | (everyone[:, 1] < point[1]) | (everyone[:, 2] < point[2])
        assert not (better_eq & strictly).any()
    expected = pareto_mask(everyone, ["max", "min", "min"])
    assert result.trials["pareto"].tolist() == expected.tolist()


def test_reloaded_artifacts_reproduce_logged_accuracy_and_size(sweep):
    result, root, _ = sweep
    data = CharData.load(next((root / "runs" / "data").glob("*/data.pt")))
    cfg = result.config
    for row in result.trials.itertuples():
        path = Path(row.artifact)
        assert path.stat().st_size == pytest.approx(row.size_mb * 1e6, abs=0.5)
        model = result.load_model(row.trial_id)
        assert model.vocab == data.vocab
        for split, logged in ((data.val, row.accuracy), (data.test, row.test_accuracy)):  # searched on val, reported on test
            assert score_lm(model, split, context=cfg.task.context, max_positions=cfg.task.eval_tokens).accuracy == logged
        assert load_model(path).vocab == data.vocab


def test_second_sweep_reuses_the_teacher_through_the_cli(sweep, capsys):
    result, root, uri = sweep
    code = cli.main([
        "sweep", str(SMOKE), "--trials", "1", "--storage", str(root / "runs"), "--tracking-uri", uri,
        "--set", "params.bits=4",
    ])
    out = capsys.readouterr().out
    assert code == 0
    assert "[1/1] trial-0001" in out and ": 1 of 1 trials (teacher:" in out and f"orchestrator ui --tracking-uri {uri}" in out
    client = MlflowClient(uri)
    parents = client.search_runs([result.experiment_id], "tags.`orchestrator.role` = 'sweep'", order_by=["start_time DESC"])
    assert len(parents) == 2
    assert parents[0].data.tags["teacher_cache_hit"] == "true"
    assert parents[0].data.tags["teacher_outputs_cache_hit"] == "true"
    assert parents[1].data.tags["teacher_outputs_cache_hit"] == "false"
    assert parents[1].data.tags["teacher_outputs_precision"] == pool_precision("auto", "cpu")  # bf16 on an AMX CPU
    assert parents[1].data.metrics["teacher_outputs_mb"] > 0
    assert parents[0].data.tags["teacher_key"] == parents[1].data.tags["teacher_key"]
    assert np.isclose(parents[0].data.metrics["teacher_accuracy"], result.teacher.accuracy)


def test_a_failing_trial_is_recorded_and_explained_and_max_failures_stops_the_sweep(sweep, capfd):
    result, root, uri = sweep
    # on a Ray Train worker group, with the teacher live: the worker's own error reaches the trial's run
    code = cli.main([
        "sweep", str(SMOKE), "--trials", "3", "--max-failures", "1", "--storage", str(root / "runs"), "--tracking-uri", uri,
        "--set", "experiment=failures", "--set", "params.optimizer=sgd", "--set", "params.lr=1.0e6", "--set", "params.sparsity=0.0",
        "--set", "resources.launcher=ray_train", "--set", "distill.teacher_outputs=live",
    ])
    out, err = capfd.readouterr()
    assert code == 1
    # the console has the cause in one line, not Tune's traceback (that stays in error.txt and the MLflow run)
    line = next(x for x in out.splitlines() if x.startswith("[1/3] trial-0001: FAILED: "))
    assert "FloatingPointError: training diverged" in line and "error.txt" in line
    assert "Traceback" not in out + err
    assert "stopped after 1 failed trials (max_failures)" in err and "--resume failures" not in err
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("failures").experiment_id
    parent = client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'")[0]
    assert parent.info.status == "KILLED" and parent.data.metrics["trials_failed"] == 1
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 1  # stopped: the other two trials never started
    child = children[0]
    assert child.info.status == "FAILED"
    assert child.data.tags["error"].startswith("FloatingPointError: training diverged")
    assert [a.path for a in client.list_artifacts(child.info.run_id)] == ["error.txt"]
    sweep_id = parent.data.tags["sweep_id"]
    assert f"--resume {sweep_id}" in err
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{root / 'runs' / 'sweeps' / sweep_id / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL"]


def test_a_trial_that_differs_only_after_distillation_reuses_the_student(sweep):
    result, root, uri = sweep
    fixed = {"params.width": 16, "params.beta": 0.3, "params.lambda": 0.5, "params.temperature": 2.0,
             "params.optimizer": "adamw", "params.lr": 0.005, "params.bits": {"choices": [3, 8]}}
    reused = Sweep.from_yaml(SMOKE, trials=2, storage=str(root / "runs"), tracking_uri=uri, experiment="reuse", **fixed).run()
    t = reused.trials.sort_values("cache_hit_distill")
    assert (t["status"] == "COMPLETED").all()
    assert t["cache_hit_distill"].tolist() == [0.0, 1.0]
    first, second = t.iloc[0], t.iloc[1]
    assert second["val_accuracy"] == first["val_accuracy"]  # the same float student
    assert second["time_distill_s"] == 0 and second["time_distill_fit_s"] < 0.5 < first["time_distill_fit_s"]
    tags = MlflowClient(uri).get_run(second["run_id"]).data.tags
    assert tags["cache_hit.distill"] == "true"
    # the teacher and its outputs came from the first sweep of this storage
    assert tags["cache_hit.teacher"] == tags["cache_hit.teacher_outputs"] == "true"


def test_constraints_keep_infeasible_trials_off_the_front_and_reach_the_sampler(sweep):
    result, root, uri = sweep
    constrained = Sweep.from_yaml(
        SMOKE, trials=2, storage=str(root / "runs"), tracking_uri=uri, experiment="constrained", sampler="tpe",
        constraints={"min_accuracy": 0.99},
    ).run()
    t = constrained.trials
    assert (t["status"] == "COMPLETED").all() and not t["feasible"].any()
    assert constrained.pareto.empty and constrained.recommend() is None and constrained.hypervolume == 0
    client = MlflowClient(uri)
    assert all(client.get_run(r).data.tags.get("feasible") == "false" for r in t["run_id"])
    sweep_id = client.get_run(constrained.run_id).data.tags["sweep_id"]
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{root / 'runs' / 'sweeps' / sweep_id / 'optuna.db'}")
    told = {round(t.values[0], 9): t.constraints for t in study.trials}
    for acc in t["accuracy"]:
        assert told[round(acc, 9)] == {"min_accuracy": pytest.approx(0.99 - acc)}


def test_early_stopping_stops_a_planted_dominated_trial_and_not_a_smaller_one(sweep, capfd):
    result, root, uri = sweep
    capfd.readouterr()
    planted = [
        {"layers": 1, "width": 32, "lr": 1e-2},  # trains normally: the front
        {"layers": 2, "width": 64, "lr": 1e-7},  # bigger, slower and learns nothing: dominated
        {"layers": 1, "width": 8, "lr": 1e-7},  # learns nothing either, but smaller than the front: never dominated
    ]
    early = Sweep.from_yaml(
        SMOKE, trials=3, storage=str(root / "runs"), tracking_uri=uri, experiment="early", max_concurrent_trials=1,
        initial_points=planted, early_stopping={"enabled": True, "margin": 0.02, "every": 10},
        **{"distill.steps": 40, "params.layers": {"choices": [1, 2]}, "params.width": {"choices": [8, 32, 64]},
           "params.lr": {"choices": [1e-2, 1e-7]}, "params.bits": 32, "params.sparsity": 0.0, "params.beta": 0.0},
    ).run()
    t = early.trials.set_index(early.trials[["layers", "width"]].astype(str).agg("x".join, axis=1))
    assert t.loc["1x32", "status"] == "COMPLETED" and t.loc["1x32", "pareto"]
    assert t.loc["2x64", "status"] == "STOPPED", t[["status", "val_accuracy"]]
    assert t.loc["2x64", "stopped_at_step"] == 10 and t.loc["2x64", "stop_reason"].startswith("dominated")
    assert t.loc["2x64", "pre_size_mb"] > t.loc["1x32", "size_mb"]
    assert t.loc["1x8", "status"] == "COMPLETED"  # its pre-measured size beats the front: it never stops
    # the same format; the entropy coder codes trained weights a little differently from untrained ones
    assert abs(t.loc["1x8", "pre_size_mb"] - t.loc["1x8", "size_mb"]) < 0.05 * t.loc["1x8", "size_mb"]
    client = MlflowClient(uri)
    run = client.get_run(t.loc["2x64", "run_id"])
    assert run.data.tags["early_stopped"] == "true" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(t.loc["1x8", "run_id"], "val_accuracy")][:3] == [10, 20, 30]
    assert client.get_run(early.run_id).data.metrics["trials_stopped_early"] == 1
    assert "completed. Last result" not in capfd.readouterr().out  # Tune's own line for a trial stopped early: not printed
    sweep_id = client.get_run(early.run_id).data.tags["sweep_id"]
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{root / 'runs' / 'sweeps' / sweep_id / 'optuna.db'}")
    assert sorted(s.state.name for s in study.trials) == ["COMPLETE", "COMPLETE", "PRUNED"]


def test_a_sweep_resumes_its_study_and_keeps_its_trials(sweep):
    result, root, uri = sweep
    kw = dict(storage=str(root / "runs"), tracking_uri=uri, experiment="resume")
    first = Sweep.from_yaml(SMOKE, trials=2, **kw).run()
    sweep_id = MlflowClient(uri).get_run(first.run_id).data.tags["sweep_id"]
    with pytest.raises(ConfigError, match="`params.bits` is"):
        Sweep.from_yaml(SMOKE, trials=1, **kw, **{"params.bits": 4}).run(resume=sweep_id)
    with pytest.raises(ConfigError, match="`pipeline` is .* here but .* in that sweep"):
        Sweep.from_yaml(SMOKE, trials=1, **kw, pipeline=["distill", "prune", {"quantize": {"method": "symmetric"}}]).run(resume=sweep_id)
    more = Sweep.from_yaml(SMOKE, trials=3, **kw).run(resume=sweep_id)  # `trials` counts the whole sweep
    assert len(more.trials) == 3 and list(more.trials["trial_id"][:2]) == list(first.trials["trial_id"])
    assert list(more.trials["run_id"][:2]) == list(first.trials["run_id"])  # the earlier trials' MLflow runs
    configs = more.trials[["width", "sparsity", "bits", "lr"]].round(9).astype(str).agg("|".join, axis=1)
    assert configs.nunique() == 3  # the resumed sampler does not redo the first trials
    assert more.hypervolume >= first.hypervolume
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{root / 'runs' / 'sweeps' / sweep_id / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert more.run_id == first.run_id  # one parent run, reopened and finished again
    parent = MlflowClient(uri).get_run(more.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["resumed"] == "true" and parent.data.tags["previous_trials"] == "2"
    names = [r.info.run_name for r in MlflowClient(uri).search_runs(
        [more.experiment_id], f"tags.`mlflow.parentRunId` = '{more.run_id}'", order_by=["attributes.start_time ASC"])]
    assert names == ["trial-0001", "trial-0002", "trial-0003"]


def test_the_study_lives_in_a_database_when_study_storage_names_one(sweep):
    result, root, uri = sweep
    db = f"sqlite:///{root / 'studies.db'}"  # a PostgreSQL or MySQL URL on a cluster; SQLite is the same code
    kw = dict(storage=str(root / "runs"), tracking_uri=uri, experiment="study", study_storage=db)
    first = Sweep.from_yaml(SMOKE, trials=1, **kw).run()
    sweep_id = MlflowClient(uri).get_run(first.run_id).data.tags["sweep_id"]
    assert not (root / "runs" / "sweeps" / sweep_id / "optuna.db").exists()
    with pytest.raises(ConfigError, match="`study_storage` holds no study of that name"):
        Sweep.from_yaml(SMOKE, trials=1, **{**kw, "study_storage": f"sqlite:///{root / 'other.db'}"}).check_resume(sweep_id)
    more = Sweep.from_yaml(SMOKE, trials=2, **kw).run(resume=sweep_id)
    assert len(more.trials) == 2
    assert [t.state.name for t in optuna.load_study(study_name=sweep_id, storage=db).trials] == ["COMPLETE"] * 2


RECIPE = {"params.beta": 0.0, "params.lambda": 0.5, "params.temperature": 2.0, "params.optimizer": "adamw", "params.lr": 0.005}


def _reloads_exactly(result, root, row):
    data = CharData.load(next((root / "runs" / "data").glob("*/data.pt")))
    model = result.load_model(row["trial_id"])
    cfg = result.config
    return all(score_lm(model, split, context=cfg.task.context, max_positions=cfg.task.eval_tokens).accuracy == row[column]
               for split, column in ((data.val, "accuracy"), (data.test, "test_accuracy")))


def test_structured_pruning_with_recovery_and_int8_kernels_end_to_end(sweep):
    result, root, uri = sweep
    pipeline = ["distill", {"prune": {"method": "structured", "target": "both", "recovery_steps": 10}},
                {"quantize": {"method": "symmetric"}}]
    fixed = {**RECIPE, "params.width": 32, "params.heads": 2, "params.sparsity": 0.5, "params.bits": {"choices": [8, 4]},
             "sampler": "grid"}
    out = Sweep.from_yaml(SMOKE, trials=2, storage=str(root / "runs"), tracking_uri=uri, experiment="structured",
                          pipeline=pipeline, **fixed).run()
    t = out.trials.set_index("bits")
    assert (t["status"] == "COMPLETED").all()
    assert t.loc[8, "int8_layers"] == 4 + 1 and t.loc[4, "int8_layers"] == 0  # qkv, proj, fc, fc_out, head
    assert sorted(t["cache_hit_recover"]) == [0.0, 1.0]  # the second bit width reuses the recovered student
    full = result.trials[result.trials["width"] == 32]["params"].iloc[0]
    assert (t["params"] < full).all() and (t["sparsity_measured"] == 0).all()
    for _, row in out.trials.iterrows():
        assert _reloads_exactly(out, root, row)
    tags = MlflowClient(uri).get_run(t.loc[8, "run_id"]).data.tags
    assert tags["pipeline"] == "distill > prune:structured > quantize:symmetric"


def test_gradual_pruning_with_qat_and_a_teacher_only_pipeline_end_to_end(sweep):
    result, root, uri = sweep
    gradual = Sweep.from_yaml(
        SMOKE, trials=1, storage=str(root / "runs"), tracking_uri=uri, experiment="gradual",
        pipeline=["distill", {"prune": {"schedule": "gradual", "every": 2}},
                  {"quantize": {"granularity": "group", "mode": "qat"}}],
        **{"params.sparsity": 0.5, "params.bits": 4, "params.group_size": 8},
    ).run()
    row = gradual.trials.iloc[0]
    assert row["status"] == "COMPLETED" and row["sparsity_measured"] == pytest.approx(0.5, abs=1e-3)
    assert _reloads_exactly(gradual, root, row)
    teacher_only = Sweep.from_yaml(
        SMOKE, trials=2, storage=str(root / "runs"), tracking_uri=uri, experiment="teacher-only",
        pipeline=[{"prune": {"method": "nm"}}, "quantize"], sampler="grid",
        **RECIPE, params={"bits": {"choices": [4, 8]}, "layers": 2, "width": 64, "heads": 2, "sparsity": 0.0},
    ).run()
    t = teacher_only.trials
    assert (t["status"] == "COMPLETED").all() and (t["sparsity_measured"] == 0.5).all()
    assert (t["params"] == result.teacher.params).all()  # the teacher itself, compressed
    assert (t["size_mb"] < result.teacher.metrics["size_bytes_plain"] / 1e6 / 4).all()  # a quarter of its float32 bytes


def test_a_fanout_sweep_compresses_each_new_student_several_ways(sweep):
    """fanout 3: after a trial trains a new student, two more trials compress it other ways (the sampler picks their
    sparsity and bits). One at a time, six trials: two students, each compressed three ways. (With trials side by
    side, a slot whose queue of fan-out trials is empty takes a fresh proposal rather than idle, so a sweep may
    distil more students than trials / fanout.)"""
    result, root, uri = sweep
    fanned = Sweep.from_yaml(SMOKE, trials=6, fanout=3, max_concurrent_trials=1, sampler_seed=11, storage=str(root / "runs"),
                             tracking_uri=uri, experiment="fanout").run()
    t = fanned.trials
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    client = MlflowClient(uri)
    students = [client.get_run(r).data.tags["distill.student"] for r in t["run_id"]]
    trained = int((t["cache_hit_distill"] == 0).sum())
    assert trained == len(set(students)) == 2 and sorted(students.count(k) for k in set(students)) == [3, 3]
    for student in set(students):
        rows = t[[s == student for s in students]]
        assert rows[list(fanned.config.student_params)].nunique().max() == 1  # one student: the same distillation params
    hits = t[t["cache_hit_distill"] == 1]
    assert (hits["distill_saved_s"] > 0).all() and (hits["time_distill_s"] == 0).all()
    parent = client.get_run(fanned.run_id).data.metrics
    assert parent["distillations"] == trained and parent["distill_saved_s"] == pytest.approx(hits["distill_saved_s"].sum())
    assert parent["fanout_trials_queued"] >= len(t) - trained
    values = t[["accuracy", "size_mb", "latency_ms"]].to_numpy(float)  # all feasible: no constraints
    assert set(fanned.pareto["trial_id"]) == set(t["trial_id"][pareto_mask(values, ["max", "min", "min"])])


def test_successive_halving_stops_students_at_a_rung_by_their_place_among_those_that_reached_it(sweep):
    """fidelity: each student is judged at step 10 of 20 against the students judged there before it; the verdicts
    in rungs.jsonl follow the promotion rule, the stopped ones end STOPPED (PRUNED in Optuna) and the promoted ones
    train on to step 20 (never from scratch)."""
    from orchestrator.core.fidelity import promoted
    from orchestrator.io.sweep_files import SweepFiles
    from orchestrator.io.storage import Storage

    result, root, uri = sweep
    halved = Sweep.from_yaml(SMOKE, trials=5, sampler_seed=5, fidelity={"enabled": True, "eta": 2, "rungs": 1},
                             storage=str(root / "runs"), tracking_uri=uri, experiment="fidelity").run()
    t = halved.trials
    client = MlflowClient(uri)
    sweep_id = client.get_run(halved.run_id).data.tags["sweep_id"]
    rungs = SweepFiles(Storage(str(root / "runs")), sweep_id).read_rungs()
    trained = t[t["cache_hit_distill"] != 1]  # a student reused from the cache is not judged again
    assert sorted(r.trial_id for r in rungs) == sorted(trained["trial_id"]) and {r.step for r in rungs} == {10}
    names = ["accuracy", "size_mb", "latency_ms"]
    for i, r in enumerate(rungs):  # each verdict, from the points recorded before it
        before = np.array([[p.point[n] for n in names] for p in rungs[:i]]).reshape(-1, 3)
        assert promoted([r.point[n] for n in names], before, ["max", "min", "min"], 2) == (r.promoted, r.place, r.size)
    by_id = t.set_index("trial_id")
    for r in rungs:
        row = by_id.loc[r.trial_id]
        if r.promoted:
            assert row["status"] == "COMPLETED" and row["distill_steps"] == 20
        else:
            assert row["status"] == "STOPPED" and row["stop_reason"].startswith("rung 1 (step 10): place")
    assert not all(r.promoted for r in rungs) and rungs[0].promoted  # the first has nothing to rank against
    parent = client.get_run(halved.run_id).data.metrics
    stopped = sum(not r.promoted for r in rungs)
    assert parent["fidelity_rung1_stopped"] == stopped and parent["fidelity_steps_saved"] == 10 * stopped
    study = optuna.load_study(study_name=sweep_id, storage=f"sqlite:///{root / 'runs' / 'sweeps' / sweep_id / 'optuna.db'}")
    assert sum(s.state == optuna.trial.TrialState.PRUNED for s in study.trials) == stopped


def test_a_sweep_measured_in_onnx_runtime_keeps_files_that_run_without_this_package(sweep):
    """measure.runtime onnxruntime: every trial writes model.onnx beside model.orc (its run keeps both), the service
    times the .onnx on ONNX Runtime, and a front point's `onnx` MLflow model predicts what the torch model predicts."""
    import mlflow.pyfunc
    import onnx
    import torch

    from orchestrator.runtimes.onnx import OrtModel

    result, root, uri = sweep
    run = Sweep.from_yaml(SMOKE, trials=2, storage=str(root / "runs"), tracking_uri=uri, experiment="onnx", sampler_seed=5,
                          **{"measure.runtime": "onnxruntime", "params.bits": {"choices": [4, 8]}}).run()
    t = run.trials
    data = CharData.load(next((root / "runs" / "data").glob("*/data.pt")))
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    assert (t["latency_ms"] > 0).all() and (t["onnx_mb"] > 0).all() and (t["time_export_formats_s"] > 0).all()
    client = MlflowClient(uri)
    for _, row in t.iterrows():
        assert {"model.orc", "model.onnx"} <= {f.path for f in client.list_artifacts(row["run_id"])}
        assert client.get_run(row["run_id"]).data.tags["export.onnx"] == row["export_onnx"]
        graph = onnx.load(row["export_onnx"]).graph
        assert sum(n.op_type == "MatMulNBits" for n in graph.node) == 5  # one block's qkv, proj, fc, fc_out, and the head
        ort_model = OrtModel(row["export_onnx"], threads=1)  # the held-out metrics through ONNX Runtime: the logged ones
        for split, logged in ((data.val, row["accuracy"]), (data.test, row["test_accuracy"])):
            scored = score_lm(ort_model, split, context=run.config.task.context, max_positions=run.config.task.eval_tokens)
            assert abs(scored.accuracy - logged) <= 1e-3  # argmax ties may fall the other way in float32: 4 of 4096 positions
    point = run.pareto.iloc[0]
    mlflow.set_tracking_uri(uri)
    try:
        pyfunc = mlflow.pyfunc.load_model(f"runs:/{point['run_id']}/onnx")  # the onnx flavour: ONNX Runtime, no orchestrator
    finally:
        mlflow.set_tracking_uri(None)
    x = np.random.default_rng(0).integers(0, 20, size=(3, 32))
    predicted = pyfunc.predict({"input": x})
    logits = np.asarray(predicted["output"] if isinstance(predicted, dict) else predicted)
    with torch.no_grad():
        want = load_model(point["artifact"])(torch.from_numpy(x))[0].numpy()
    assert logits.shape == want.shape and (logits.argmax(-1) == want.argmax(-1)).mean() > 0.99


def test_a_sweep_over_effective_bits_allocates_widths_per_tensor_within_each_budget(sweep):
    """`allocation: sensitivity`: every trial meets its budget on its artifact's measured bits, logs its allocation,
    reloads bit-exactly with its logged accuracies; the budgets a student is fanned out to reuse its sensitivities;
    the front is the front of its trials."""
    result, root, uri = sweep
    mixed = Sweep.from_yaml(
        SMOKE, trials=4, fanout=2, max_concurrent_trials=1, sampler_seed=3, storage=str(root / "runs"), tracking_uri=uri,
        experiment="mixed", pipeline=["distill", {"quantize": {"granularity": "group", "allocation": "sensitivity",
                                                               "candidate_bits": [2, 3, 4, 8, 16], "sensitivity_windows": 4,
                                                               "recovery_steps": 3}}],  # QAT at each tensor's width
        **{**RECIPE, "params.effective_bits": {"low": 2.8, "high": 6.0}, "params.group_size": 16, "params.sparsity": 0.0,
           "params.bits": 32},
    ).run()
    t = mixed.trials
    assert (t["status"] == "COMPLETED").all(), t["error"].tolist()
    assert (t["effective_bits_measured"] <= t["effective_bits"]).all()  # the budget searched, and what the artifact takes
    client = MlflowClient(uri)
    for _, row in t.iterrows():
        run = client.get_run(row["run_id"])
        budget = float(run.data.params["effective_bits"])
        assert run.data.metrics["effective_bits"] == row["effective_bits_measured"] and budget == row["effective_bits"]
        local = client.download_artifacts(row["run_id"], "allocation.json", str(root / f"alloc-{row['trial_id']}"))
        table = json.loads(Path(local).read_text())
        assert table["budget"] == budget and table["estimate"] == "fisher" and table["columns"][:2] == ["tensor", "bits"]
        assert len({r[1] for r in table["data"]}) > 1
        assert _reloads_exactly(mixed, root, row)
    students = [client.get_run(r).data.tags["distill.student"] for r in t["run_id"]]
    assert len(set(students)) < len(t)  # fanned out: one student at several budgets
    for student in set(students):  # its sensitivities computed once in this sweep, read back for every other budget
        hits = t["cache_hit_sensitivity"][[s == student for s in students]]
        assert (hits == 0).sum() == 1 and (hits == 1).sum() == len(hits) - 1
    values = t[["accuracy", "size_mb", "latency_ms"]].to_numpy(float)
    assert set(mixed.pareto["trial_id"]) == set(t["trial_id"][pareto_mask(values, ["max", "min", "min"])])


def test_an_untouched_teacher_is_all_of_its_own_bytes(sweep):
    """One size reference: the teacher's float32 artifact coded as the students' are, so a teacher compressed by
    nothing (32 bits) has compression ratio 1; the plain reference and the test scores are on the parent run too."""
    result, root, uri = sweep
    untouched = Sweep.from_yaml(SMOKE, trials=1, storage=str(root / "runs"), tracking_uri=uri, experiment="untouched",
                                pipeline=["quantize"], **RECIPE, params={"bits": 32, "layers": 2, "width": 64, "heads": 2, "sparsity": 0.0}).run()
    row = untouched.trials.iloc[0]
    assert row["compression_ratio"] == 1.0 and row["size_bytes"] == untouched.teacher.size_bytes
    parent = MlflowClient(uri).get_run(untouched.run_id).data.metrics
    assert parent["teacher_size_bytes_plain"] > parent["teacher_size_bytes"] == row["size_bytes"]
    assert parent["teacher_test_perplexity"] > 1 and parent["teacher_test_accuracy"] > 0


def test_the_same_seed_makes_the_same_models_byte_for_byte(ray_session, tmp_path):
    """One configuration run twice from empty storages, two trials at a time: the same teacher, the same students
    and the same quantized levels (GPTQ's included), artifact for artifact."""
    import hashlib

    def digests(name: str) -> tuple[str, dict[tuple, str]]:
        root = tmp_path / name
        root.mkdir()
        result = Sweep.from_yaml(SMOKE, trials=2, max_concurrent_trials=2, storage=str(root / "runs"),
                                 tracking_uri=f"sqlite:///{root / 'mlflow.db'}", **{"distill.steps": 60},
                                 pipeline=["distill", {"prune": {"method": "magnitude"}},
                                           {"quantize": {"method": "gptq", "granularity": "group", "calibration_windows": 8}}],
                                 **{"params.bits": {"choices": [3, 4, 8]}, "params.group_size": 16}).run()
        assert (result.trials["status"] == "COMPLETED").all(), result.trials["error"].tolist()
        teacher = hashlib.sha256(Path(result.teacher.artifact).read_bytes()).hexdigest()
        return teacher, {tuple(row[p] for p in PARAMS): hashlib.sha256(Path(row["artifact"]).read_bytes()).hexdigest()
                         for _, row in result.trials.iterrows()}

    first, second = digests("first"), digests("second")
    assert first[0] == second[0] and len(first[1]) == 2
    assert first[1] == second[1]
