"""A real head node started with `ray start --head` (its own ports, token authentication on): a sweep submitted
to it as a Ray job (`ray job submit --working-dir . -- orchestrator sweep ...`), followed to SUCCEEDED and found
in MLflow, another job stopped with `ray job stop`; and a sweep driven from a Ray Client (`--address ray://`)."""

import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.servers import executable, free_port

ROOT = Path(__file__).parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A Ray head on free ports with token auth and a temp directory of its own (`--temp-dir`); yields (job server
    URL, env with the token, Ray Client address, GCS address, its temp directory); stopped after."""
    import shutil
    import tempfile

    from orchestrator.engine.cluster import RAY_ENV

    tmp_path = tmp_path_factory.mktemp("head")
    temp = Path(tempfile.mkdtemp(prefix="rh"))  # short: the head's sockets go under it
    env = {**os.environ, **RAY_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    low = free_port()  # the workers' port range: the named ports below must fall outside it, or Ray refuses to start

    def outside():
        while low <= (port := free_port()) <= low + 200:
            pass
        return port

    ports = {flag: outside() for flag in (
        "--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port", "--node-manager-port",
        "--object-manager-port")}
    proc = subprocess.Popen(
        [executable("ray"), "start", "--head", "--block", "--num-cpus", "3", "--include-dashboard", "true", "--dashboard-host",
         "127.0.0.1", "--min-worker-port", str(low), "--max-worker-port", str(low + 200), "--temp-dir", str(temp / "ray"),
         *(x for flag, port in ports.items() for x in (flag, str(port)))],
        env=env, stdout=open(tmp_path / "head.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{ports['--dashboard-port']}"
    try:
        for _ in range(120):
            if proc.poll() is not None:
                pytest.fail(f"ray start exited: {(tmp_path / 'head.log').read_text()[-2000:]}")
            if _ray(["job", "list", "--address", url], env, check=False).returncode == 0 and _listening(ports["--ray-client-server-port"]):
                break
            time.sleep(1)
        else:
            pytest.fail("the job server did not answer within 120 s")
        yield url, env, f"ray://127.0.0.1:{ports['--ray-client-server-port']}", f"127.0.0.1:{ports['--port']}", temp
    finally:
        # SIGTERM to `ray start --block` alone: it drains and stops the head's processes in order (~2 s). Sent
        # to the whole group, GCS dies first and the drain waits out its timeout (~60 s).
        os.kill(proc.pid, 15)
        proc.wait(timeout=60)
        time.sleep(3)
        try:
            os.killpg(proc.pid, 9)  # anything of the head's still there
        except ProcessLookupError:
            pass
        shutil.rmtree(temp, ignore_errors=True)  # its address file with it: no later ray.init() joins it


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _ray(args, env, check=True):
    out = subprocess.run([executable("ray"), *args], env=env, capture_output=True, text=True, timeout=120)
    assert not check or out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out


def _submit(url, env, *sweep):
    out = _ray(["job", "submit", "--address", url, "--working-dir", str(ROOT), "--no-wait", "--",
                "orchestrator", "sweep", *sweep], env)
    return re.search(r"Job '(raysubmit_\w+)' submitted successfully", out.stdout + out.stderr).group(1)


_STATUS = {"succeeded": "SUCCEEDED", "was stopped": "STOPPED", "failed": "FAILED"}  # `ray job status` wording


def _wait(url, env, job, until, timeout=420):
    """Poll `ray job status` until the job is in one of `until` or has ended; returns its status."""
    status = None
    for _ in range(timeout // 2):
        out = _ray(["job", "status", "--address", url, job], env).stdout
        said = re.search(rf"Status for job '{job}': (\w+)", out)
        status = said.group(1) if said else next((s for words, s in _STATUS.items() if f"'{job}' {words}" in out), None)
        if status in until or status in _STATUS.values():
            return status
        time.sleep(2)
    pytest.fail(f"job {job} still {status} after {timeout} s")


def test_a_sweep_runs_as_a_ray_job_and_lands_in_mlflow(head, tmp_path):
    url, env, _, _, _ = head
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = _submit(url, env, "search_spaces/smoke.yaml", "--trials", "2", "--storage", str(tmp_path / "runs"),
                  "--tracking-uri", uri)
    status = _wait(url, env, job, ("SUCCEEDED",))
    logs = _ray(["job", "logs", "--address", url, job], env).stdout
    assert status == "SUCCEEDED", logs[-3000:]
    assert "[2/2] trial" in logs and "Pareto front over accuracy, size_mb, latency_ms: 2 of 2 trials" in logs
    sweep_id = re.search(r"MLflow: sweep run (\w+)", logs).group(1)
    parent = MlflowClient(uri).get_run(sweep_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["trials_completed"] == 2

    bad = {**env, "RAY_AUTH_TOKEN": "0" * 32}  # token authentication is on: a wrong token is refused
    assert _ray(["job", "list", "--address", url], bad, check=False).returncode != 0

    long = _submit(url, env, "search_spaces/smoke.yaml", "--trials", "40", "--storage", str(tmp_path / "runs"),
                   "--tracking-uri", uri)
    assert _wait(url, env, long, ("RUNNING",)) == "RUNNING"
    _ray(["job", "stop", "--address", url, long], env)
    assert _wait(url, env, long, ("STOPPED",)) == "STOPPED"


def test_a_sweep_driven_from_a_ray_client_reports_here(head, tmp_path):
    """Through Ray Client the sweep's driver runs on the head; its progress lines, log lines, front table and
    exit status come back to this process as for a local sweep."""
    _, env, client, gcs, _ = head
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = subprocess.run(
        [executable("orchestrator"), "sweep", str(ROOT / "search_spaces" / "smoke.yaml"), "--trials", "2", "--address", client,
         "--storage", str(tmp_path / "runs"), "--tracking-uri", uri],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[1/2] trial" in out.stdout and "[2/2] trial" in out.stdout  # progress, relayed
    assert re.search(r"teacher \w+ \((built now|cache hit, reused)\)", out.stderr)  # the driver's log lines, relayed
    assert "Pareto front over accuracy, size_mb, latency_ms: 2 of 2 trials" in out.stdout
    sweep_id = re.search(r"MLflow: sweep run (\w+)", out.stdout).group(1)
    assert MlflowClient(uri).get_run(sweep_id).data.metrics["trials_completed"] == 2

    bad = {**env, "RAY_AUTH_TOKEN": "0" * 32}  # token authentication is on: without its token, one line, exit 2
    refused = subprocess.run(
        [executable("orchestrator"), "sweep", str(ROOT / "search_spaces" / "smoke.yaml"), "--address", gcs,
         "--storage", str(tmp_path / "runs"), "--tracking-uri", uri], env=bad, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.stderr.strip() == last, refused.stderr[-2000:]  # one line: checked before Ray's own retries
    assert last.startswith(f"orchestrator: error: --address '{gcs}': the Ray cluster refused this process's token"), last

    started = time.monotonic()  # through Ray Client too: one line within seconds, not Ray's minute of retries
    refused = subprocess.run(
        [executable("orchestrator"), "sweep", str(ROOT / "search_spaces" / "smoke.yaml"), "--address", client,
         "--storage", str(tmp_path / "runs"), "--tracking-uri", uri], env=bad, cwd=tmp_path, capture_output=True, text=True,
        timeout=300,
    )
    took = time.monotonic() - started
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
    assert refused.stderr.startswith(f"orchestrator: error: --address '{client}': the Ray cluster refused this process's "
                                     "token (token authentication is on there); set RAY_AUTH_TOKEN"), refused.stderr
    assert took < 30, took  # the process's start and imports included


def test_auto_finds_a_head_started_with_its_own_temp_dir_as_ray_init_does(head, tmp_path):
    """`ray start --head --temp-dir DIR/ray` and RAY_TMPDIR=DIR: `auto` is the head's GCS, resolved by Ray's own code
    (what `ray.init(address="auto")` resolves), and the preflight's handshake with it passes."""
    _, env, _, gcs, temp = head
    probe = ("from ray._private.services import canonicalize_bootstrap_address as ray_resolves\n"
             "from orchestrator.engine.preflight import _auto_address, _check_address\n"
             "_check_address('auto', '--address', 5.0)\n"
             "print(_auto_address('--address', ''), ray_resolves('auto'))")
    env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "RAY_TMPDIR": str(temp)}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    mine, rays = out.stdout.split()
    assert mine == rays and mine.endswith(f":{gcs.rsplit(':', 1)[1]}"), out.stdout  # the head's GCS, at this node's address
    nothing = Path(tmp_path / "empty")  # no address file there; Ray then looks for a GCS process on this machine
    nothing.mkdir()
    out = subprocess.run([sys.executable, "-c", probe.replace("_check_address('auto', '--address', 5.0)\n", "")],
                         env={**env, "RAY_TMPDIR": str(nothing)}, capture_output=True, text=True, timeout=120)
    mine, rays = out.stdout.split() if out.returncode == 0 else (None, None)
    assert out.returncode == 0 and mine == rays, out.stderr[-2000:]  # whichever Ray's rule picks, the same one
