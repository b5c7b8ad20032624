"""The sweep's storage: a directory every node sees (a local disk, NFS) or an object store URI (`s3://`,
`gs://`, ...) that no node has to mount.

Everything a sweep keeps has a *location*: a path under a directory storage, or a URI under the storage's
URI. Each node has its own copy of what it reads and writes, `Storage.root`: the directory itself for a
directory storage, and under `$ORCHESTRATOR_CACHE` (default ``~/.cache/orchestrator``) for a URI.

- `Storage.entry(kind, key, build)`: a content-addressed cache entry (a `Cache` kind: teachers, students,
  data, teacher outputs, ...), built once anywhere and reused everywhere. With a URI the entry is built in the node's copy,
  uploaded file by file under a directory of the node's own (`.by-<writer>/`), and its manifest (`.complete`: the key,
  that directory and each file's SHA-256) goes last, so no reader sees half an entry, and two nodes that build one
  entry at once never mix their files: the last manifest written names one whole set.
- `fetch(location)`: a local file for a location, on any node: downloaded once per node into its copy,
  checked against its entry's manifest when it has one, renamed into place (so it can be memory-mapped).
- `Storage.publish(path)`: upload a file written in the node's copy (a trial's artifact, the sweep's
  files) and return its location.
- `evict()`: with `$ORCHESTRATOR_CACHE_MAX_GB` set, a node's copies of URI storages' entries are kept under that
  size, least recently used first out (each use stamps the entry's manifest); an entry used in the last
  `CACHE_KEEP_S` is never evicted, and neither is anything of a directory storage (it is the storage itself).
  An evicted entry is downloaded again when next needed; a file already open or memory-mapped stays readable.

Example (a directory storage: locations are its paths, and nothing is copied):
    >>> s = Storage("/data/runs")
    >>> s.remote, s.location("teachers", "abc", "teacher.pt")
    (False, '/data/runs/teachers/abc/teacher.pt')
    >>> Storage("s3://bucket/runs?region=eu-west-1").location("teachers", "abc")
    's3://bucket/runs/teachers/abc?region=eu-west-1'
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.core.environ import CACHE_ENV, CACHE_MAX_ENV

MANIFEST = ".complete"  # an entry is whole when this is there: {"key": ..., "files": {name: sha256}}
CACHE_KEEP_S = 900.0  # a node's copy of an entry used this recently is never evicted (it may be about to be opened)
SCHEMES = ("s3", "gs", "gcs", "hdfs", "abfs", "abfss")  # what pyarrow.fs reaches


def is_uri(location: str | os.PathLike[str]) -> bool:
    """Whether `location` names an object store (`s3://...`) rather than a path."""
    return "://" in str(location) and not str(location).startswith("file://")


class Cache(str, enum.Enum):
    """The storage's caches: each a directory of content-addressed entries."""

    DATA = "data"  # the task's stored data
    TEACHERS = "teachers"  # trained (or loaded) teachers and their float32 artifacts
    TEACHER_MEASUREMENTS = "teacher_measurements"  # a teacher's figures, under the settings they were measured with
    TEACHER_OUTPUTS = "teacher_outputs"  # the teacher's outputs on a pool of training examples
    STUDENTS = "students"  # distilled, recovered and quantize-recovered students
    GPTQ = "gptq"  # a calibrated quantizer's results (GPTQ's levels and scales)
    SENSITIVITY = "sensitivity"  # a model's sensitivity to each width of each tensor (mixed-precision allocation)


def cache_root() -> Path:
    """This node's copy of URI storages: $ORCHESTRATOR_CACHE, read on the node itself (each node may set its own)."""
    return Path(os.environ.get(CACHE_ENV) or "~/.cache/orchestrator").expanduser().resolve()


def _split(uri: str) -> tuple[str, str, str]:
    """(scheme, bucket/path without trailing slash, query) of a URI."""
    parts = urlsplit(uri)
    return parts.scheme, f"{parts.netloc}{parts.path}".rstrip("/"), parts.query


_FILESYSTEMS: dict[tuple[str, str, str], object] = {}


def _filesystem(uri: str):  # -> (pyarrow.fs.FileSystem, path in it)
    """pyarrow's filesystem for a URI (one per bucket and options in a process) and the URI's path in it."""
    import pyarrow.fs

    scheme, path, query = _split(uri)
    bucket = path.split("/", 1)[0]
    fs_key = (scheme, bucket, query)
    if fs_key not in _FILESYSTEMS:
        _FILESYSTEMS[fs_key] = pyarrow.fs.FileSystem.from_uri(f"{scheme}://{bucket}{'?' + query if query else ''}")[0]
    return _FILESYSTEMS[fs_key], path


def _local_copy(uri: str) -> Path:
    """Where this node keeps its copy of the object at `uri`."""
    scheme, path, _ = _split(uri)
    return cache_root() / scheme / path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(uri: str, to: Path, sha256: str | None = None) -> None:
    """Copy the object at `uri` to `to` through a temporary file renamed into place, checking its hash."""
    fs, path = _filesystem(uri)
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(f".{to.name}.{uuid.uuid4().hex}.tmp")
    try:
        with fs.open_input_stream(path) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        if sha256 is not None and _sha256(tmp) != sha256:
            raise OSError(f"{uri}: its content does not match its entry's manifest (a writer raced or the object "
                          "was changed); delete the entry's directory in storage and run again")
        os.replace(tmp, to)
    finally:
        tmp.unlink(missing_ok=True)


def _upload(path: Path, uri: str) -> None:
    fs, remote = _filesystem(uri)
    with open(path, "rb") as src, fs.open_output_stream(remote) as dst:
        shutil.copyfileobj(src, dst, 1 << 22)


def _write_remote(uri: str, blob: bytes) -> None:
    fs, remote = _filesystem(uri)
    with fs.open_output_stream(remote) as dst:
        dst.write(blob)


def _exists(uri: str) -> bool:
    import pyarrow.fs

    fs, path = _filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def _read_remote(uri: str) -> bytes | None:
    if not _exists(uri):
        return None
    fs, path = _filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def fetch(location: str | os.PathLike[str]) -> Path:
    """A local file for `location` on this node: a path as it is; a URI's object downloaded once per node,
    with the rest of the cache entry it belongs to (checked against the entry's manifest), when it has one."""
    if not is_uri(location):
        return Path(location)
    uri = str(location)
    local = _local_copy(uri)
    if local.is_file():
        _used(local.parent)
        return local
    scheme, path, query = _split(uri)
    entry = f"{scheme}://{path.rsplit('/', 1)[0]}{'?' + query if query else ''}"
    blob = _read_remote(_join(entry, MANIFEST))
    if blob is not None:  # a file of a cache entry: the node takes the whole entry, as `Storage.entry` would
        _download_entry(entry, local.parent, json.loads(blob))
        evict()
    if not local.is_file():  # not part of an entry (or not in its manifest): the object alone
        _download(uri, local)
    return local


@contextlib.contextmanager
def fetched_once(location: str) -> Iterator[Path]:
    """A local file for a one-off `location` (a checkpoint to start from), kept only for the `with` block: a
    path as it is; a URI's object downloaded to a private temporary file, unless this node wrote it."""
    local = fetch(location) if not is_uri(location) or _local_copy(location).is_file() else None
    if local is not None:
        yield local
        return
    with tempfile.TemporaryDirectory(prefix="orchestrator-fetch-") as tmp:
        _download(location, Path(tmp) / "file")
        yield Path(tmp) / "file"


@dataclass(frozen=True)
class Storage:
    """A sweep's storage (`storage` in the YAML): a directory path or an object store URI."""

    where: str

    def __getstate__(self) -> dict[str, str]:
        return {"where": self.where}  # not `root`: each node finds its own copy (`cache_root`, read on the node)

    @property
    def remote(self) -> bool:
        return is_uri(self.where)

    @cached_property
    def root(self) -> Path:
        """This node's copy: the directory itself, or the node's cache of the URI."""
        return _local_copy(self.where) if self.remote else Path(self.where).expanduser().resolve()

    def path(self, *parts: str) -> Path:
        """The node-local path of `parts` (what is written here before `publish`)."""
        return self.root.joinpath(*parts)

    def location(self, *parts: str) -> str:
        """Where `parts` lives in the storage: a path, or a URI (with the storage URI's options)."""
        if not self.remote:
            return str(self.root.joinpath(*parts))
        scheme, path, query = _split(self.where)
        return f"{scheme}://{'/'.join([path, *parts])}{'?' + query if query else ''}"

    def located(self, path: Path) -> str:
        """The location of a node-local path under `root`."""
        return self.location(*Path(path).relative_to(self.root).parts)

    def publish(self, path: Path) -> str:
        """Upload a file written under `root` (nothing to do for a directory storage); returns its location."""
        where = self.located(path)
        if self.remote:
            _upload(Path(path), where)
        return where

    def discard(self, path: Path) -> None:
        """Delete a file written under `root`, and its uploaded copy if any."""
        where = self.located(path)
        Path(path).unlink(missing_ok=True)
        if self.remote and _exists(where):
            import pyarrow.fs

            fs, remote = _filesystem(where)
            fs.delete_file(remote)
            # pyarrow leaves the "directory" of a bucket's last file there as an empty marker: a file published from
            # a build's temporary directory (a teacher's init.pt) would leave that directory's name in the cache
            parent = remote.rsplit("/", 1)[0]
            if not fs.get_file_info(pyarrow.fs.FileSelector(parent, allow_not_found=True)):
                fs.delete_dir(parent)

    def read_text(self, *parts: str) -> str | None:
        """The text of a (small) file in the storage, read there, not from the node's copy; None if absent."""
        if not self.remote:
            p = self.path(*parts)
            return p.read_text() if p.is_file() else None
        blob = _read_remote(self.location(*parts))
        return None if blob is None else blob.decode()

    def pull(self, *parts: str) -> Path | None:
        """Refresh the node's copy of a file from the storage (a sweep's files on resume); None if absent."""
        if not self.remote:
            p = self.path(*parts)
            return p if p.is_file() else None
        if not _exists(self.location(*parts)):  # (a check, not a second download)
            return None
        _download(self.location(*parts), self.path(*parts))
        return self.path(*parts)

    def listdir(self, *parts: str) -> list[str]:
        """Names directly under `parts` in the storage (empty if none)."""
        if not self.remote:
            p = self.path(*parts)
            return sorted(c.name for c in p.iterdir()) if p.is_dir() else []
        import pyarrow.fs

        fs, path = _filesystem(self.location(*parts))
        infos = fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
        return sorted(i.base_name for i in infos)

    def probe(self) -> None:
        """Write and remove a probe file (a probe object in a URI storage) where the storage is; it leaves
        nothing behind. Raises what the filesystem raises when it cannot."""
        if not self.remote:
            probe_directory(self.root)
            return
        fs, path = _filesystem(self.location(f".orchestrator-probe-{uuid.uuid4().hex}"))
        with fs.open_output_stream(path) as f:
            f.write(b"probe")
        fs.delete_file(path)

    def entry(self, kind: Cache, key: str, build: Callable[[Path], None]) -> tuple[Path, bool]:
        """Return (the node-local entry directory, hit). On a miss everywhere `build(tmp_dir)` fills a fresh
        directory, which is renamed into place (and, for a URI, uploaded with its manifest last).

        Args:
            kind: the cache.
            key: from `core.keys.content_key`: a hash of everything that determines the entry.
        """
        kind = Cache(kind).value
        local = self.path(kind, key)
        if (local / MANIFEST).exists():
            _used(local)
            return local, True
        if self.remote:
            blob = _read_remote(self.location(kind, key, MANIFEST))
            if blob is not None:
                _download_entry(self.location(kind, key), local, json.loads(blob))
                evict()
                return local, True
        _build_entry(local, key, build)
        if self.remote:
            manifest = json.loads((local / MANIFEST).read_text())
            if not _exists(self.location(kind, key, MANIFEST)):  # another node may have finished first
                own = {**manifest, "dir": f".by-{uuid.uuid4().hex}"}  # this writer's files, apart from any other's
                for name in manifest["files"]:
                    _upload(local / name, self.location(kind, key, own["dir"], name))
                blob = json.dumps(own).encode()
                _write_remote(self.location(kind, key, MANIFEST), blob)
            evict()
        return local, False

def _used(entry: Path) -> None:
    """Stamp the node's copy of an entry as used now (its manifest's time: what eviction orders by)."""
    with contextlib.suppress(OSError):
        os.utime(entry / MANIFEST)


def node_entries() -> list[tuple[Path, int, float]]:
    """This node's copies of URI storages' cache entries: (directory, bytes, last use), least recently used first."""
    found = []
    for scheme in SCHEMES:
        for manifest in (cache_root() / scheme).rglob(MANIFEST):
            entry = manifest.parent
            try:
                size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
                found.append((entry, size, manifest.stat().st_mtime))
            except OSError:  # evicted meanwhile by another process
                continue
    return sorted(found, key=lambda e: e[2])


def cache_limit() -> int | None:
    """The node cache's limit in bytes ($ORCHESTRATOR_CACHE_MAX_GB), or None (no limit)."""
    value = os.environ.get(CACHE_MAX_ENV)
    if not value:
        return None
    try:
        limit = float(value)
    except ValueError:
        raise ValueError(f"${CACHE_MAX_ENV} = {value!r} is not a number of GB; set e.g. {CACHE_MAX_ENV}=50, or unset it") from None
    if limit <= 0:
        raise ValueError(f"${CACHE_MAX_ENV} = {value!r} must be > 0 GB; set e.g. {CACHE_MAX_ENV}=50, or unset it")
    return int(limit * 1e9)


def evict(limit: int | None = None, keep_s: float = CACHE_KEEP_S) -> list[Path]:
    """Remove this node's least recently used entry copies until they take at most `limit` bytes (default
    $ORCHESTRATOR_CACHE_MAX_GB; nothing without one), skipping any used in the last `keep_s` seconds; returns
    what it removed. One process of the node evicts at a time; an entry goes whole (renamed away, then deleted)."""
    limit = cache_limit() if limit is None else limit
    if limit is None:
        return []
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    removed: list[Path] = []
    with open(root / ".evict.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = node_entries()
        total, now = sum(size for _, size, _ in entries), time.time()
        for entry, size, used in entries:
            if total <= limit:
                break
            if now - used < keep_s:
                continue
            gone = entry.with_name(f".{entry.name}.{uuid.uuid4().hex}.evicted")
            try:
                os.rename(entry, gone)
            except OSError:
                continue
            shutil.rmtree(gone, ignore_errors=True)
            removed.append(entry)
            total -= size
    return removed


def probe_directory(directory: Path) -> None:
    """Create `directory` (and its missing parents), write and remove a probe file, then remove what was
    created: the check leaves nothing behind. OSError when it cannot be written."""
    missing = []
    for d in [directory, *directory.parents]:
        if d.exists():
            break
        missing.append(d)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".orchestrator-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"probe")
        probe.unlink()
    finally:
        for d in missing:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break


def _join(uri: str, name: str) -> str:
    scheme, path, query = _split(uri)
    return f"{scheme}://{path}/{name}{'?' + query if query else ''}"


def _download_entry(uri: str, local: Path, manifest: dict) -> None:
    """Copy the whole entry at `uri` into `local` (every file of its manifest, each checked, then the
    manifest) through a temporary directory renamed into place: a node never holds half an entry."""
    key = local.name
    if manifest.get("key") != key:
        raise OSError(f"{uri}: its manifest names key {manifest.get('key')!r}, not its own directory's; delete "
                      "that entry in storage and run again")
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
    where = f"{manifest['dir']}/" if manifest.get("dir") else ""  # the writer's own directory (older entries: none)
    try:
        for name, sha in manifest["files"].items():
            _download(_join(uri, f"{where}{name}"), tmp / name, sha)
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        try:
            os.rename(tmp, local)
        except OSError:  # another process of this node downloaded it first
            if not (local / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_entry(entry: Path, key: str, build: Callable[[Path], None]) -> None:
    """Build the entry under a temporary name and rename it into place (when another writer finished it
    first, theirs is as good as ours)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{key}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        build(tmp)
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {"key": key, "files": {str(p.relative_to(tmp)): _sha256(p) for p in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
