"""One Ray instance for the whole test session (started only if a test asks for it)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from orchestrator.sweep import RAY_ENV

    os.environ.update(RAY_ENV)
    # 3 logical CPUs on a 2-core machine: room for two 1-CPU trials (or one 2-CPU one) beside the sweep's
    # measurement service, as `resources.local_cpus: 3` gives a sweep
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": RAY_ENV})
    try:
        yield ray
    finally:
        ray.shutdown()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-protocol server (moto) on 127.0.0.1 with a bucket `sweeps`; yields a storage URI prefix
    that reaches it (`s3://sweeps/<prefix>?endpoint_override=...&scheme=http`, with `{}` for the prefix).
    Credentials are set for this process and the processes it starts (Ray's workers inherit them)."""
    import shutil
    import subprocess
    import time
    import urllib.request

    if shutil.which("moto_server") is None:
        pytest.fail("moto_server is missing: pip install 'moto[server]' (the [test] extra has it)")
    port = free_port()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail("moto_server did not start within 10 s")
        import pyarrow.fs

        pyarrow.fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir("sweeps")
        yield f"s3://sweeps/{{}}?endpoint_override=127.0.0.1:{port}&scheme=http"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path_factory, s3_server):
    """A real `mlflow server` on a free port: runs in SQLite, artifacts proxied to the S3 server's bucket
    (`mlflow/`), so no client writes an artifact to its own disk. Yields its URL; stopped afterwards."""
    import subprocess
    import time
    import urllib.request

    port, root = free_port(), tmp_path_factory.mktemp("mlflow_server")
    endpoint = s3_server.split("endpoint_override=")[1].split("&")[0]
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": f"http://{endpoint}", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        ["mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
         "s3://sweeps/mlflow", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), start_new_session=True,
    )
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
                time.sleep(0.1)
        else:
            pytest.fail("mlflow server did not answer within 60 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
