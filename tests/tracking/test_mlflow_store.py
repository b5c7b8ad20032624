"""The MLflow tracker against a real SQLite MLflow store: the sweep's runs, batches, retries, artifacts."""

from mlflow.tracking import MlflowClient

from orchestrator.tracking.base import flatten
from orchestrator.tracking.mlflow_store import MlflowTracker
from orchestrator.tracking.sweep_runs import SweepRuns


def _runs(uri, experiment="exp", sweep="s"):
    return SweepRuns(MlflowTracker(uri, experiment), sweep)


def test_parent_and_children_and_a_stopped_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = _runs(uri)
    tracker = runs.tracker
    parent = runs.start(params={"a": {"b": 1}, "params": {"bits": 4}}, tags={"k": "v"}, description="", metrics={})
    done = runs.start_trial("t1", {"bits": 4, "lambda": 0.5})
    left = runs.start_trial("t2", {"bits": 8, "lambda": 0.1})
    tracker.log(done, metrics={"accuracy": 0.5, "size_mb": 0.1, "flag": True, "name": "x"})
    runs._end(done, "FINISHED")
    runs.end("KILLED")

    client = MlflowClient(uri)
    p = client.get_run(parent)
    assert p.info.status == "KILLED"
    assert p.data.params == {"a.b": "1", "params.bits": "4"} and p.data.tags["k"] == "v"
    d, l = client.get_run(done), client.get_run(left)
    assert d.info.status == "FINISHED" and d.data.metrics == {"accuracy": 0.5, "size_mb": 0.1}
    assert d.data.tags["mlflow.parentRunId"] == parent and d.data.params["lambda"] == "0.5"
    assert l.info.status == "KILLED" and "stopped before this trial finished" in l.data.tags["error"]
    assert (d.info.run_name, l.info.run_name) == ("trial-0001", "trial-0002") and runs.run_names == {"t1": "trial-0001", "t2": "trial-0002"}
    assert tracker.seconds > 0 and tracker.failures == []


def test_results_curves_and_tags_go_in_one_batch_and_curves_keep_their_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runs = _runs(uri)
    tracker = runs.tracker
    runs.start(params={}, tags={}, description="", metrics={})
    runs.last_number = 6  # a resumed sweep counts on
    run = runs.start_trial("t1", {})
    calls = []
    batch = tracker.client.log_batch
    tracker.client.log_batch = lambda *a, **k: calls.append(k) or batch(*a, **k)
    curve = [[s, 1.0 / s] for s in range(1, 1201)]  # more points than one batch holds
    tracker.log(run, metrics={"accuracy": 0.5}, step=1200, curves={"distill_loss": curve}, tags={"k": "v"})
    assert len(calls) == 2 and len(calls[0]["metrics"]) == 1000 and calls[1]["tags"] == []
    client = MlflowClient(uri)
    history = client.get_metric_history(run, "distill_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(s, v) for s, v in curve]
    got = client.get_run(run)
    assert got.info.run_name == "trial-0007" and got.data.metrics["accuracy"] == 0.5 and got.data.tags["k"] == "v"


def test_a_tracking_call_is_retried_then_given_up_with_a_warning(tmp_path, caplog, monkeypatch):
    import orchestrator.tracking.mlflow_store as store

    monkeypatch.setattr(store.time, "sleep", lambda s: None)
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "exp", outage_s=0.0)  # no outage to wait out: three tries
    tries = []

    def flaky():
        tries.append(1)
        if len(tries) < 3:
            raise ConnectionError("server away")
        return "ok"

    tracker.client.flaky = flaky  # the client's calls, as the tracker makes them: by name
    assert tracker.call("flaky", "flaky") == (True, "ok") and len(tries) == 3

    def down():
        raise ConnectionError("connection refused")

    tracker.client.down = down

    assert tracker.call("log metrics", "down") == (False, None)
    assert len(tracker.failures) == 1 and "log metrics failed 3 times (ConnectionError: connection refused)" in tracker.failures[0]
    assert "the sweep goes on without it" in caplog.text

    tracker.outage_s = 0.5  # a call that waited the outage out: the next are tried once
    assert tracker.call("log metrics", "down") == (False, None) and tracker.down
    assert tracker.call("log metrics", "down") == (False, None) and tracker.attempts == 1
    assert tracker.call("flaky", "flaky") == (True, "ok") and not tracker.down  # back: calls wait again

    def missing():
        tries.append(1)
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

        raise MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)

    tries.clear()
    tracker.client.missing = missing
    assert tracker.call("get", "missing")[0] is False and len(tries) == 1  # a 4xx answer is not retried
    assert "get failed (not retried: MLflow refused it) (MlflowException: no such run)" in tracker.failures[-1]


def test_artifacts_live_next_to_the_sqlite_file_and_experiments_are_reused(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = MlflowTracker(uri, "my sweep")
    run = first.create_run("s", {}, strict=True)
    f = tmp_path / "x.txt"
    f.write_text("hi")
    first.log_artifact(run, f)
    assert (tmp_path / "mlruns" / "my-sweep" / run / "artifacts" / "x.txt").read_text() == "hi"
    assert MlflowTracker(uri, "my sweep").experiment_id == first.experiment_id


def test_flatten():
    assert flatten({"a": {"b": {"c": 1}}, "d": 2}) == {"a.b.c": 1, "d": 2}
