"""`--address`: the CLI joins a running multi-node Ray cluster and distils with DDP across its nodes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

SMOKE = Path(__file__).parents[1] / "search_spaces" / "smoke.yaml"

pytestmark = pytest.mark.slow


def test_cli_sweep_on_a_three_node_cluster_with_workers_on_distinct_nodes(tmp_path):
    from ray.cluster_utils import Cluster

    from orchestrator.sweep import RAY_ENV

    env = {**os.environ, **RAY_ENV}
    os.environ.update(RAY_ENV)  # the nodes' processes inherit them
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        timing = cluster.add_node(num_cpus=1, resources={"latency_target": 1})  # the node type kept for measurement
        cluster.wait_for_nodes()
        uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", "sweep", str(SMOKE), "--address", cluster.address,
             "--trials", "1", "--storage", str(tmp_path / "runs"), "--tracking-uri", uri,
             "--set", "resources.num_workers=2", "--set", "resources.cpus_per_worker=1",
             "--set", "resources.placement_strategy=STRICT_SPREAD", "--set", "measure.target=latency_target"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "[1/1] trial" in proc.stdout and ": 1 of 1 trials (teacher:" in proc.stdout
        runs = MlflowClient(uri).search_runs(["1"], "tags.`orchestrator.role` = 'trial'")
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        assert runs[0].data.metrics["accuracy"] > 0 and runs[0].data.metrics["latency_ms"] > 0
        tags = runs[0].data.tags
        workers = {n.node_id for n in cluster.worker_nodes} - {timing.node_id}
        assert set(tags["distill.worker_nodes"].split(",")) == workers  # one rank on each training node
        digests = tags["distill.worker_weights"].split(",")
        assert len(digests) == 2 and len(set(digests)) == 1  # every rank ended with the same weights: DDP synced them
        assert tags["node"] in {n.node_id for n in cluster.list_all_nodes()}
        parent = MlflowClient(uri).search_runs(["1"], "tags.`orchestrator.role` = 'sweep'")[0]
        assert parent.data.tags["measure.node"] == timing.node_id  # every figure was measured on the timing node
    finally:
        cluster.shutdown()
