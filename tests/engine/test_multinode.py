"""A sweep on a three-node cluster laid out as cluster.yaml lays it out, with nodes that share no disk: the
head runs the trial drivers (`trial_driver`) and never trains, DDP puts one rank on each worker node, the
measurement service runs on the `latency_target` nodes (a replica on each); storage in an S3 bucket (a real S3-protocol server),
MLflow on a real tracking server whose artifacts go to the bucket, each node with its own local cache."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from orchestrator.core.environ import CACHE_ENV
from orchestrator.io.storage import Storage

SMOKE = Path(__file__).parents[2] / "search_spaces" / "smoke.yaml"
DDP = ["--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=1", "--set",
       "resources.placement_strategy=STRICT_SPREAD", "--set", "resources.driver_resource=trial_driver"]

pytestmark = pytest.mark.slow


def _sweep(address: str, storage: str, tracking: str, cache: Path, cwd: Path, *more: str) -> subprocess.CompletedProcess:
    from orchestrator.engine.cluster import RAY_ENV

    env = {**os.environ, **RAY_ENV, CACHE_ENV: str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator", "sweep", str(SMOKE), "--address", address, "--trials", "2",
         "--storage", storage, "--tracking-uri", tracking, "--set", "measure.target=latency_target", "--set", "measure.replicas=2",
         *DDP, *more],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def test_a_ddp_sweep_on_s3_storage_across_nodes_that_share_no_disk(tmp_path, s3_server, mlflow_server, monkeypatch):
    from ray._private.services import node_ip_address_from_perspective
    from ray.cluster_utils import Cluster

    from orchestrator import load_model
    from orchestrator.engine.cluster import RAY_ENV

    storage = s3_server.format("cluster")
    caches = {name: tmp_path / "caches" / name for name in ("head", "a", "b", "head2", "head3", "test")}
    monkeypatch.setenv(CACHE_ENV, str(caches["test"]))  # what this test process reads back
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    os.environ.update(RAY_ENV)
    # the machine's address, as `ray start` would take it, whether or not this process has a Ray of its own up (the
    # session's, on the loopback: Ray would hand its address to these nodes, and the sweep's driver, in a process
    # of its own, would find no node of the cluster at its address and wait for one)
    ip = node_ip_address_from_perspective(None)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "resources": {"trial_driver": 100}, "include_dashboard": False, "node_ip_address": ip,
        "env_vars": {CACHE_ENV: str(caches["head"])}})
    try:
        a = cluster.add_node(num_cpus=2, resources={"latency_target": 1}, node_ip_address=ip, env_vars={CACHE_ENV: str(caches["a"])})
        b = cluster.add_node(num_cpus=1, resources={"latency_target": 1}, node_ip_address=ip, env_vars={CACHE_ENV: str(caches["b"])})
        cluster.wait_for_nodes()

        first = _sweep(cluster.address, storage, mlflow_server, caches["head"], cwd)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        client = MlflowClient(mlflow_server)
        experiment = client.get_experiment_by_name("smoke").experiment_id
        trials = client.search_runs([experiment], "tags.`orchestrator.role` = 'trial'")
        assert len(trials) == 2 and {r.info.status for r in trials} == {"FINISHED"}
        for run in trials:
            tags = run.data.tags
            assert run.data.metrics["accuracy"] > 0 and run.data.metrics["latency_ms"] > 0
            assert tags["node"] == cluster.head_node.node_id  # the driver waited on the head, which never trains
            assert sorted(tags["distill.worker_nodes"].split(",")) == sorted([a.node_id, b.node_id])  # a rank per node
            digests = tags["distill.worker_weights"].split(",")
            assert len(digests) == 2 and len(set(digests)) == 1  # every rank ended with the same weights: DDP synced
        parent = client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'")[0]
        # every figure was measured by one of the two replicas of the measurement service, one per latency_target node
        assert sorted(parent.data.tags["measure.node"].split(",")) == sorted([a.node_id, b.node_id])
        assert parent.data.tags["measure.replicas"] == "2"
        artifact = trials[0].data.tags["artifact"]
        assert artifact.startswith("s3://sweeps/cluster/sweeps/") and artifact.split("?")[0].endswith("/model.orc")
        for trial in trials:  # a front point's run also holds its MLflow model, in the bucket through the server
            front = trial.data.tags["pareto"] == "true"
            assert [f.path for f in client.list_artifacts(trial.info.run_id)] == (["model", "model.orc"] if front else ["model.orc"])
        assert trials[0].info.artifact_uri.startswith("mlflow-artifacts:")  # proxied to the bucket, not a local path
        for node in ("a", "b"):  # each rank read the data and the teacher's outputs into its own node's cache
            assert list((caches[node] / "s3" / "sweeps" / "cluster" / "teacher_outputs").glob("*/teacher_outputs.pt"))

        # the second sweep: a fresh driver cache and emptied node caches, so everything comes from the bucket
        for node in ("head", "a", "b"):
            shutil.rmtree(caches[node])
        second = _sweep(cluster.address, storage, mlflow_server, caches["head2"], cwd)
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        assert "cache hit, reused" in second.stdout + second.stderr
        parents = client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'", order_by=["attributes.start_time"])
        assert [p.data.tags["teacher_cache_hit"] for p in parents] == ["false", "true"]
        assert parents[1].data.tags["teacher_outputs_cache_hit"] == "true" and parents[1].data.tags["storage"] == storage
        again = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parents[1].info.run_id}'")
        assert [r.data.tags["cache_hit.distill"] for r in again] == ["true", "true"]  # students from the bucket
        assert list((caches["head"] / "s3" / "sweeps" / "cluster" / "students").glob("*/student.pt"))  # the drivers' node

        # nothing was written to a local directory two nodes share
        assert sorted(os.listdir(cwd)) == []  # no ./orchestrator_runs, no ./mlruns, no mlflow.db
        assert sorted(os.listdir(tmp_path)) == ["caches", "cwd"]
        model = load_model(artifact)
        assert sum(p.numel() for p in model.parameters()) > 0

        # resumed from a driver with an empty cache: the study and the trials so far come from the bucket
        first_id = parents[0].data.tags["sweep_id"]
        third = _sweep(cluster.address, storage, mlflow_server, caches["head3"], cwd, "--resume", first_id, "--trials", "3")
        assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
        assert re.search(r": \d of 3 trials \(teacher:", third.stdout)  # the earlier two count in the front
        rows = Storage(storage).read_text("sweeps", first_id, "trials.jsonl").splitlines()
        assert len(rows) == 3  # the bucket's trials.jsonl continued, not replaced
        resumed = client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'", order_by=["attributes.start_time"])
        assert len(resumed) == 2 and resumed[0].info.run_id == parents[0].info.run_id  # the first sweep's run, reopened
        assert resumed[0].info.status == "FINISHED" and resumed[0].data.tags["resumed"] == "true"
        runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{resumed[0].info.run_id}'",
                                  order_by=["attributes.start_time"])
        assert [r.info.run_name for r in runs] == ["trial-0001", "trial-0002", "trial-0003"]  # numbered on
        import optuna

        study = Storage(storage).pull("sweeps", first_id, "optuna.db")
        assert len(optuna.load_study(study_name=first_id, storage=f"sqlite:///{study}").trials) == 3
    finally:
        cluster.shutdown()


def test_two_sweeps_on_two_nodes_building_the_same_entries_at_once_both_finish_with_one_whole_entry_each(tmp_path, s3_server):
    """Two sweeps of one configuration started at the same moment on one bucket, each on a node of its own (its own
    Ray and cache): they build the same teacher, teacher outputs and students at once. Both finish with their trials,
    and each entry in the bucket is one whole entry: a third node reads it (a hit, every file checked against the
    manifest) and never builds it again."""
    from orchestrator.engine.cluster import RAY_ENV
    from orchestrator.io.records import TrialRecord, from_json
    from orchestrator.io.storage import Cache

    storage = s3_server.format("twosweeps")
    procs = []
    for node in ("a", "b"):
        cwd = tmp_path / node
        cwd.mkdir()
        env = {**os.environ, **RAY_ENV, CACHE_ENV: str(tmp_path / "caches" / node)}
        cmd = [sys.executable, "-m", "orchestrator", "sweep", str(SMOKE), "--trials", "2", "--storage", storage,
               "--tracking-uri", f"sqlite:///{cwd / 'mlflow.db'}", "--set", "teacher.steps=1000"]  # long enough that both build it
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)

    bucket = Storage(storage)
    sweeps = bucket.listdir("sweeps")
    assert len(sweeps) == 2
    for sweep in sweeps:  # each sweep's own record: its two trials, completed
        rows = [from_json(TrialRecord, line) for line in bucket.read_text("sweeps", sweep, "trials.jsonl").splitlines()]
        assert [r.status.value for r in rows] == ["COMPLETED", "COMPLETED"]
    os.environ[CACHE_ENV] = str(tmp_path / "caches" / "third")
    try:
        built = {kind.value: bucket.listdir(kind.value) for kind in Cache}
        assert all(built[k] for k in ("teachers", "teacher_outputs", "students")), built
        for kind, keys in built.items():
            for key in keys:
                entry, hit = Storage(storage).entry(kind, key, lambda d: pytest.fail(f"{kind}/{key} built again"))
                assert hit and (entry / ".complete").exists()
    finally:
        del os.environ[CACHE_ENV]
    hits = []  # whether each sweep found the teacher in the bucket, or built it
    for node in ("a", "b"):
        client = MlflowClient(f"sqlite:///{tmp_path / node / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("smoke").experiment_id
        hits.append(client.search_runs([experiment], "tags.`orchestrator.role` = 'sweep'")[0].data.tags["teacher_cache_hit"])
    assert hits == ["false", "false"]  # each built it: the two builds raced (their students may or may not have)
