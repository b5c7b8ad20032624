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


def _address(hex_address: str) -> str:
    """/proc/net/tcp{,6}'s hex address as text: 127.0.0.1, ::ffff:127.0.0.1, ::1, 0.0.0.0, ::."""
    import ipaddress

    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # four host-order 32-bit words
    return str(ipaddress.IPv6Address(words))


def listening(pgid: int) -> dict[str, set[str]]:
    """Process name -> the local addresses its TCP sockets listen on, for every process of group `pgid`."""
    inodes: dict[str, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes[fields[9]] = _address(fields[1].rpartition(":")[0])
    found: dict[str, set[str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            if int(text.rpartition(")")[2].split()[2]) != pgid:
                continue
            name = text[text.index("(") + 1 : text.rindex(")")]
            for fd in (stat.parent / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    found.setdefault(name, set()).add(inodes[target[8:-1]])
        except (OSError, ValueError):
            continue  # a process that ended meanwhile
    return found


def loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


class MlflowServer:
    """`mlflow server` on 127.0.0.1 (SQLite runs and registry, artifacts stored and served by the server)
    that can be stopped and started again on the same port with the same stores, as a server that goes
    down does."""

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root, self.port = Path(root), port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "MlflowServer":
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = self.root / "server.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "a"), start_new_session=True,
        )
        try:
            wait_for(f"{self.uri}/health", self.proc, 90, log)
        except Exception:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop(self.proc)
        self.proc = None
