"""The tracking journal against a real `mlflow server` that goes away for longer than the retry window: what the
tracker could not deliver waits in the journal, in order, and is delivered when the server answers, once; the
run it makes holds exactly what a run logged with the server up holds."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.tracking.journal import ENTRIES, PENDING_PREFIX, REPLAYED, Journal
from orchestrator.tracking.mlflow_store import MlflowTracker, client_settings
from tests.servers import MlflowServer

pytestmark = pytest.mark.slow

SYSTEM_TAGS = ("mlflow.runName", "mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.log-model.history",
               "orchestrator.run_key", "mlflow.source.git.commit")


def record(tracker: MlflowTracker, name: str, artifact) -> str:
    """One run as a sweep makes a trial's: created, params, progress at steps, results with curves and tags, a
    file, ended."""
    run_id = tracker.create_run(name, {"role": "trial", "sweep_id": "s1"})
    tracker.log(run_id, params={"width": 32, "distill": {"steps": 40}, "optimizer": "adamw"})
    for step in (10, 20, 30):
        tracker.log(run_id, metrics={"val_accuracy": step / 100}, step=step)
    tracker.log(run_id, metrics={"accuracy": 0.25, "size_mb": 0.02}, step=40, curves={"loss": [[0, 3.0], [20, 2.0], [40, 1.5]]},
                tags={"pareto": "true", "cache_hit.distill": "false"})
    tracker.log_artifact(run_id, artifact)
    tracker.end_run(run_id, "FINISHED")
    return run_id


def held(client: MlflowClient, run_id: str) -> dict:
    """What a run holds, without what differs between any two runs (ids, names, times)."""
    run = client.get_run(run_id)
    metrics = {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}
    return {"status": run.info.status, "params": run.data.params, "metrics": metrics,
            "tags": {k: v for k, v in run.data.tags.items() if k not in SYSTEM_TAGS},
            "files": sorted(a.path for a in client.list_artifacts(run_id))}


def test_records_made_while_the_server_is_away_are_delivered_once_in_order(tmp_path):
    server = MlflowServer(tmp_path / "server").start() if (tmp_path / "server").mkdir() is None else None
    try:
        artifact = tmp_path / "model.orc"
        artifact.write_bytes(b"weights")
        with client_settings():
            tracker = MlflowTracker(server.uri, "journal", outage_s=1.0)
            tracker.journal = Journal(tmp_path / "journal")
            reference = record(tracker, "trial-0001", artifact)
            assert tracker.journaled == 0

            server.stop()
            away = record(tracker, "trial-0002", artifact)
            artifact.unlink()  # the file it logged is gone: the journal kept a copy
            assert away.startswith(PENDING_PREFIX) and tracker.failures == []
            calls = [e["call"] for e in tracker.journal.pending()]
            assert calls == ["create_run", "log_batch", "log_batch", "log_batch", "log_batch", "log_batch", "log_artifact",
                             "set_terminated"]  # every call after the first that waited out the window, in order
            assert tracker.journaled == len(calls)

            server.start()
            assert tracker.flush(wait=True) == len(calls) and tracker.pending() == 0
            assert tracker.flush(wait=True) == 0
            client = MlflowClient(server.uri)
            delivered = tracker.journal.ids()[away]
            assert held(client, delivered) == held(client, reference)

            # delivered again from the start (a driver killed before it counted the delivery): nothing twice
            (tmp_path / "journal" / REPLAYED).write_text("0")
            again = MlflowTracker(server.uri, "journal", outage_s=1.0)
            again.journal = Journal(tmp_path / "journal")
            assert again.flush(wait=True) == len(calls)
            experiment = client.get_experiment_by_name("journal").experiment_id
            assert sorted(r.info.run_name for r in client.search_runs([experiment])) == ["trial-0001", "trial-0002"]
            assert held(client, delivered) == held(client, reference)
            assert len((tmp_path / "journal" / ENTRIES).read_text().splitlines()) == len(calls)
    finally:
        server.stop()
