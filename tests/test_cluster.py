"""A sweep across nodes that share no disk: storage in an S3 bucket (a real S3-protocol server), MLflow on a
real tracking server whose artifacts go to the bucket, each node with its own local cache."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.storage import CACHE_ENV, Storage

SMOKE = Path(__file__).parents[1] / "search_spaces" / "smoke.yaml"

pytestmark = pytest.mark.slow


def _sweep(address: str, storage: str, tracking: str, cache: Path, cwd: Path, *more: str) -> subprocess.CompletedProcess:
    from orchestrator.sweep import RAY_ENV

    env = {**os.environ, **RAY_ENV, CACHE_ENV: str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", str(SMOKE), "--address", address, "--trials", "2",
         "--storage", storage, "--tracking-uri", tracking, "--set", "max_concurrent_trials=2",
         "--set", "measure.target=latency_target", *more],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def test_a_sweep_on_s3_storage_reuses_the_bucket_and_writes_no_shared_local_directory(tmp_path, s3_server, mlflow_server,
                                                                                         monkeypatch):
    import shutil

    from ray.cluster_utils import Cluster

    from orchestrator import load_model
    from orchestrator.sweep import RAY_ENV

    storage = s3_server.format("cluster")
    caches = {name: tmp_path / "caches" / name for name in ("head", "a", "b", "head2", "head3", "test")}
    monkeypatch.setenv(CACHE_ENV, str(caches["test"]))  # what this test process reads back
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    os.environ.update(RAY_ENV)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "env_vars": {CACHE_ENV: str(caches["head"])}})
    try:
        cluster.add_node(num_cpus=2, resources={"latency_target": 1}, env_vars={CACHE_ENV: str(caches["a"])})
        cluster.add_node(num_cpus=1, env_vars={CACHE_ENV: str(caches["b"])})
        cluster.wait_for_nodes()

        first = _sweep(cluster.address, storage, mlflow_server, caches["head"], cwd)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        client = MlflowClient(mlflow_server)
        experiment = client.get_experiment_by_name("smoke").experiment_id
        trials = client.search_runs([experiment], "tags.`orchestrator.role` = 'trial'")
        assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
        artifact = trials[0].data.tags["artifact"]
        assert artifact.startswith("s3://sweeps/cluster/sweeps/") and artifact.split("?")[0].endswith("/model.orc")
        assert [f.path for f in client.list_artifacts(trials[0].info.run_id)] == ["model.orc"]
        assert trials[0].info.artifact_uri.startswith("mlflow-artifacts:")  # proxied to the bucket, not a local path

        # the second sweep: a fresh driver cache and emptied node caches, so everything comes from the bucket
        for name in ("a", "b"):
            shutil.rmtree(caches[name], ignore_errors=True)
        second = _sweep(cluster.address, storage, mlflow_server, caches["head2"], cwd)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "cache hit, reused" in second.stdout + second.stderr
        parents = client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'", order_by=["attributes.start_time"])
        assert [p.data.tags["teacher_cache_hit"] for p in parents] == ["false", "true"]
        assert parents[1].data.tags["teacher_outputs_cache_hit"] == "true" and parents[1].data.tags["storage"] == storage
        again = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parents[1].info.run_id}'")
        assert [r.data.tags["cache_hit.distill"] for r in again] == ["true", "true"]  # students from the bucket

        # each node read what it needed into its own cache, and nothing else was written locally
        downloaded = [p for p in (caches["a"], caches["b"]) if (p / "s3" / "sweeps" / "cluster" / "students").is_dir()]
        assert downloaded, "no node fetched a student from the bucket"
        assert sorted(os.listdir(cwd)) == []  # no ./orchestrator_runs, no ./mlruns, no mlflow.db
        assert sorted(os.listdir(tmp_path)) == ["caches", "cwd"]
        model = load_model(artifact)
        assert sum(p.numel() for p in model.parameters()) > 0

        # resumed from a driver with an empty cache: the study and the trials so far come from the bucket
        first_id = parents[0].data.tags["sweep_id"]
        third = _sweep(cluster.address, storage, mlflow_server, caches["head3"], cwd, "--resume", first_id, "--trials", "1")
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        assert re.search(r": \d of 3 trials \(teacher:", third.stdout)  # the earlier two count in the front
        rows = Storage(storage).read_text("sweeps", first_id, "trials.jsonl").splitlines()
        assert len(rows) == 3  # the bucket's trials.jsonl continued, not replaced
        import optuna

        study = Storage(storage).pull("sweeps", first_id, "optuna.db")
        assert len(optuna.load_study(study_name=first_id, storage=f"sqlite:///{study}").trials) == 3
    finally:
        cluster.shutdown()
