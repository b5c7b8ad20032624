"""What a config names outside this process, checked before any work starts: the storage takes a write,
the MLflow tracking store answers, the Ray cluster answers. Each failure is one `ConfigError` line naming
the value, where it came from, what was tried and the fix; a failed check leaves nothing behind.

`load_config` checks the config's own values; these checks touch the world, so they run once, right
before a sweep starts (`Sweep.run`, and the CLI before it prints anything), on the resolved context.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from orchestrator.core.errors import ConfigError, show
from orchestrator.engine.context import SweepContext
from orchestrator.io.storage import cache_limit, probe_directory

T = TypeVar("T")
TIMEOUT_S = 5.0  # how long a server has to answer


def check_reachable(ctx: SweepContext, *, named: Mapping[str, str] | None = None, timeout: float = TIMEOUT_S) -> None:
    """`ConfigError` unless the storage, the tracking store and the Ray address of `ctx` are usable now.

    Args:
        named: how errors name a setting's source, e.g. ``{"storage": "--storage"}`` (default: where the
            context says it came from: the config file's key, or the environment variable).
        timeout: seconds each server has to answer.
    """
    named = ctx.named(named)
    client = str(ctx.ray_address or "").startswith("ray://")  # the driver runs on the cluster's head: its paths are there
    if not client or ctx.storage.remote:
        _check_storage(ctx, named["storage"], timeout)
    if not client or urlsplit(ctx.tracking_uri).scheme in ("http", "https"):
        _check_tracking(ctx.tracking_uri, named["tracking_uri"], timeout)
    if ctx.ray_address is not None:
        _check_address(ctx.ray_address, named["address"], timeout)


def _within(timeout: float, fn: Callable[[], T]) -> T:
    """`fn()` in a daemon thread; TimeoutError when it takes longer than `timeout` (a client that retries
    forever is left behind, not waited for)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 (re-raised below, in the caller's thread)
            box["error"] = e

    thread = threading.Thread(target=target, name="orchestrator-reachable", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


@contextlib.contextmanager
def _stderr_hidden() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (what native code writes there too)."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _check_storage(ctx: SweepContext, name: str, timeout: float) -> None:
    store = ctx.storage
    try:
        cache_limit()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not store.remote:
        try:
            store.probe()
        except OSError as e:
            raise ConfigError(f"{name} {show(store.where)}: cannot write there ({type(e).__name__}: {e.strerror or e}); "
                              "give a directory you can write, or a reachable URI such as s3://bucket/prefix") from None
        return
    try:
        _within(timeout, store.probe)
    except Exception as e:  # pyarrow raises OSError for most, ArrowInvalid for a malformed URI
        raise ConfigError(f"{name} {show(store.where)}: a probe object could not be written and removed there "
                          f"({type(e).__name__}: {' '.join(str(e).split())[:200]}); check the bucket, its endpoint and "
                          "your credentials") from None


def _check_tracking(uri: str, name: str, timeout: float) -> None:
    parts = urlsplit(uri)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme in ("http", "https"):
        health = f"{uri.rstrip('/')}/health"
        try:
            _within(timeout + 1, lambda: urllib.request.urlopen(health, timeout=timeout).close())  # noqa: S310 (http(s) only)
        except urllib.error.HTTPError:
            return  # it answered (a server behind a proxy or with auth may not serve /health)
        except Exception as e:
            reason = getattr(e, "reason", e)
            raise ConfigError(f"{name} {show(uri)}: no MLflow server answered there (tried GET {health}: "
                              f"{' '.join(str(reason).split())[:160]}); start it (mlflow server --port {parts.port or 5000}) "
                              "or give a reachable tracking URI") from None
    elif scheme == "sqlite":
        db = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not db or db == ":memory:":
            return
        directory = Path(db).expanduser().parent
        if not directory.is_dir():
            raise ConfigError(f"{name} {show(uri)}: the directory of the SQLite file, {directory}, does not exist; create it "
                              "or give another tracking URI")
        try:
            probe_directory(directory)
        except OSError as e:
            raise ConfigError(f"{name} {show(uri)}: cannot write the SQLite file's directory {directory} "
                              f"({e.strerror or e}); give a tracking URI in a directory you can write") from None
    elif scheme in ("file", ""):
        path = Path(parts.path if scheme else uri).expanduser()
        try:
            probe_directory(path)
        except OSError as e:
            raise ConfigError(f"{name} {show(uri)}: cannot write there ({e.strerror or e}); give a directory you can write "
                              "or another tracking URI") from None
    elif scheme in ("postgresql", "mysql", "mssql") and parts.hostname:
        default = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}[scheme]
        _connect(parts.hostname, parts.port or default, name, uri, timeout, "the database")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # + an empty SETTINGS frame


def _connect(host: str, port: int, name: str, value: str, timeout: float, what: str, fix: str = "", *,
             grpc: bool = False) -> None:
    """A TCP connection to host:port within `timeout`; with `grpc`, also a gRPC server's answer to HTTP/2's
    connection preface (its SETTINGS frame): a port that only accepts connections (a proxy, a firewall that
    answers for everything) does not pass."""
    tried = f"tried a TCP connection to {host}:{port}{' and an HTTP/2 greeting' if grpc else ''} for {timeout:g} s"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if grpc:
                sock.sendall(_HTTP2_PREFACE)
                head = sock.recv(9)
                if len(head) < 9 or head[3] != 0x04:
                    raise OSError(f"it answered, but not as a gRPC server ({'nothing' if not head else show(head)})")
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise ConfigError(f"{name} {show(value)}: {what} did not answer ({tried}: {reason})"
                          f"{fix or '; check the host, the port and the firewall'}") from None


def _check_address(address: str, name: str, timeout: float) -> None:
    """A Ray address: `auto` (found as `ray.init` finds it: Ray's address file in its temp directory, `RAY_TMPDIR`
    included, then a GCS process on this machine), HOST:PORT or ray://HOST:PORT."""
    fix = "; start the cluster's head (ray start --head) or give the address it printed"
    if address == "auto":
        address = _auto_address(name, fix)
    where = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = where.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{name} {show(address)}: not a Ray address; give auto, HOST:6379 or ray://HOST:10001")
    _connect(host.strip("[]"), int(port), name, address, timeout, "the Ray cluster", fix, grpc=True)
    if address.startswith("ray://"):
        _client_handshake(address, where, name, timeout, fix)
    else:
        _gcs_handshake(address, name, timeout, fix)


def _auto_address(name: str, fix: str) -> str:
    """The cluster `auto` means, by Ray's own code (`ray._private.services.canonicalize_bootstrap_address`, what
    `ray.init(address="auto")` runs): `$RAY_ADDRESS`, else the address file the last `ray start` wrote in Ray's temp
    directory, else a running GCS process of this machine."""
    from ray._common.utils import get_ray_address_file
    from ray._private import services

    try:
        found = services.canonicalize_bootstrap_address("auto")
    except ConnectionError:
        found = None
    if not found:
        raise ConfigError(f"{name} 'auto': no running Ray cluster found the way ray.init finds one (the address file "
                          f"{get_ray_address_file(None)}, then a Ray GCS process on this machine){fix}")
    return found


def _client_handshake(address: str, where: str, name: str, timeout: float, fix: str) -> None:
    """Ask the Ray Client server for a ping, as `ray.init("ray://...")` does first, over a channel made by Ray's own
    helper (with this process's token when token authentication is on): a refused token is told here in one line
    (Ray's client retries it for a minute and more)."""
    import grpc
    import ray.core.generated.ray_client_pb2 as pb
    import ray.core.generated.ray_client_pb2_grpc as pb_grpc
    from ray._private.grpc_utils import init_grpc_channel
    from ray.util.client.common import GRPC_OPTIONS

    channel = init_grpc_channel(where, options=GRPC_OPTIONS, asynchronous=False)
    try:
        pb_grpc.RayletDriverStub(channel).ClusterInfo(pb.ClusterInfoRequest(type=pb.ClusterInfoType.PING), timeout=timeout)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise ConfigError(f"{name} {show(address)}: the Ray cluster refused this process's token (token authentication "
                              "is on there); set RAY_AUTH_TOKEN to its token (`ray get-auth-token` on the head)") from None
        if e.code() == grpc.StatusCode.UNIMPLEMENTED:
            raise ConfigError(f"{name} {show(address)}: it answered, but not as a Ray Client server (asked for a ping: "
                              f"{' '.join(str(e.details()).split())[:160]}){fix}") from None
        # anything else (the server busy starting a client's process, a deadline): Ray's own connect retries it
    finally:
        channel.close()


def _gcs_handshake(address: str, name: str, timeout: float, fix: str) -> None:
    """Ask the cluster's GCS for its cluster id, as `ray.init` does first: a port that is no Ray's, or a
    token that the cluster refuses, is told here in one line (Ray itself retries for seconds, logging each
    try). Ray's own client (`ray._raylet.GcsClient`, what its processes use)."""
    import ray.exceptions
    from ray._raylet import GcsClient

    try:
        with _stderr_hidden():  # its C++ client logs each failed try to the process's stderr itself
            _within(timeout, lambda: GcsClient(address=address).cluster_id)
    except ray.exceptions.AuthenticationError:
        raise ConfigError(f"{name} {show(address)}: the Ray cluster refused this process's token (token "
                          "authentication is on there); set RAY_AUTH_TOKEN to its token (`ray get-auth-token` on the head)") from None
    except Exception as e:
        raise ConfigError(f"{name} {show(address)}: it answered, but not as a Ray cluster's GCS (asked for its cluster id: "
                          f"{' '.join(str(e).split())[:160]}){fix}") from None
