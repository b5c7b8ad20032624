"""SweepTracker against a real SQLite MLflow store."""

from mlflow.tracking import MlflowClient

from orchestrator.tracking import SweepTracker, flatten


def test_parent_and_children_and_a_stopped_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker(uri, "exp")
    parent = tracker.start(run_name="s", params={"a": {"b": 1}, "params": {"bits": 4}}, tags={"k": "v"})
    done = tracker.start_trial("t1", {"bits": 4, "lambda": 0.5})
    left = tracker.start_trial("t2", {"bits": 8, "lambda": 0.1})
    tracker.log_metrics(done, {"accuracy": 0.5, "size_mb": 0.1, "flag": True, "name": "x"})
    tracker.end(done, "FINISHED")
    tracker.end_sweep("KILLED")

    client = MlflowClient(uri)
    p = client.get_run(parent)
    assert p.info.status == "KILLED"
    assert p.data.params == {"a.b": "1", "params.bits": "4"} and p.data.tags["k"] == "v"
    d, l = client.get_run(done), client.get_run(left)
    assert d.info.status == "FINISHED" and d.data.metrics == {"accuracy": 0.5, "size_mb": 0.1}
    assert d.data.tags["mlflow.parentRunId"] == parent and d.data.params["lambda"] == "0.5"
    assert l.info.status == "KILLED" and "stopped before this trial finished" in l.data.tags["error"]


def test_artifacts_live_next_to_the_sqlite_file_and_experiments_are_reused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = SweepTracker(uri, "my sweep")
    run = first.start(run_name="s", params={}, tags={})
    f = tmp_path / "x.txt"
    f.write_text("hi")
    first.log_artifact(run, f)
    assert (tmp_path / "mlruns" / "my-sweep" / run / "artifacts" / "x.txt").read_text() == "hi"
    assert SweepTracker(uri, "my sweep").experiment_id == first.experiment_id


def test_flatten():
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}
