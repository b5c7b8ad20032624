"""Real servers for tests and benchmarks, started on free ports of 127.0.0.1 from this environment's own
executables (a `moto_server` or `mlflow` elsewhere on PATH may be another version), and stopped by PID."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def executable(name: str) -> str:
    """`name` from this Python's environment (its bin directory), else from PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} is missing: install this project with its [test] extra")
    return found


def wait_for(url: str, proc: subprocess.Popen, seconds: float, log: Path | None = None) -> None:
    """Until `url` answers; RuntimeError if `proc` exits first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited: {log.read_text()[-2000:] if log else ''}") from None
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {seconds:g} s")


def stop(proc: subprocess.Popen) -> None:
    """End a server started with `start_new_session=True` and everything it started."""
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def start_s3(bucket: str) -> tuple[subprocess.Popen, str]:
    """A moto S3 server holding an empty `bucket`; returns it and a storage URI template reaching it
    (`s3://<bucket>/{}?endpoint_override=127.0.0.1:<port>&scheme=http`, `{}` for the prefix). Sets dummy
    AWS credentials in this process's environment (processes it starts inherit them)."""
    import pyarrow.fs

    port = free_port()
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    proc = subprocess.Popen([executable("moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(f"http://127.0.0.1:{port}/moto-api/", proc, 30)
        pyarrow.fs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True).create_dir(bucket)
    except Exception:
        stop(proc)
        raise
    return proc, f"s3://{bucket}/{{}}?endpoint_override=127.0.0.1:{port}&scheme=http"
