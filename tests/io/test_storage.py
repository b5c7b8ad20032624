"""URI storage against a real S3-protocol server: entries built on one node are reused on another through
the bucket, each node reading its own local copy, checked against the entry's manifest."""

import json
import os
from pathlib import Path

import pytest

from orchestrator.core.environ import CACHE_ENV
from orchestrator.io.storage import Storage, fetch


@pytest.fixture
def node(tmp_path, monkeypatch):
    """Switch this process to the local cache of node `name`, as a node with its own disk would have."""
    def switch(name: str):
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / name))
        return tmp_path / name
    return switch


def test_an_entry_built_on_one_node_is_reused_on_another_through_the_bucket(s3_server, node):
    where = s3_server.format("entries")
    builds = []

    def build(d):
        builds.append(1)
        (d / "weights.pt").write_bytes(os.urandom(3000))
        (d / "sub").mkdir()
        (d / "sub" / "meta.json").write_text('{"a": 1}')

    cache_a = node("a")
    entry_a, hit = Storage(where).entry("teachers", "k1", build)
    assert not hit and entry_a == cache_a / "s3" / "sweeps" / "entries" / "teachers" / "k1"
    (writer,) = [n for n in Storage(where).listdir("teachers", "k1") if n.startswith(".by-")]  # its files, under its own name
    assert Storage(where).listdir("teachers", "k1") == [writer, ".complete"]
    assert Storage(where).listdir("teachers", "k1", writer) == ["sub", "weights.pt"]

    cache_b = node("b")
    entry_b, hit = Storage(where).entry("teachers", "k1", build)
    assert hit and builds == [1]  # built once, on node a
    assert entry_b.is_relative_to(cache_b)
    assert (entry_b / "weights.pt").read_bytes() == (entry_a / "weights.pt").read_bytes()
    assert (entry_b / "sub" / "meta.json").read_text() == '{"a": 1}'
    assert not list(cache_b.rglob("*.tmp"))  # downloaded under a temporary name, renamed into place

    cache_c = node("c")  # a node that first reads one file of the entry (a DDP rank) takes the whole entry
    local = fetch(Storage(where).location("teachers", "k1", "weights.pt"))
    assert local == cache_c / "s3" / "sweeps" / "entries" / "teachers" / "k1" / "weights.pt"
    assert (local.parent / ".complete").is_file() and (local.parent / "sub" / "meta.json").is_file()
    assert Storage(where).entry("teachers", "k1", build) == (local.parent, True) and builds == [1]


def test_fetch_downloads_once_per_node_and_refuses_content_that_does_not_match_the_manifest(s3_server, node):
    import pyarrow.fs

    where = s3_server.format("fetch")
    node("a")
    store = Storage(where)
    entry, _ = store.entry("students", "k2", lambda d: (d / "student.pt").write_bytes(b"x" * 100))
    location = store.located(entry / "student.pt")
    assert location == where.replace("?", "/students/k2/student.pt?")

    node("b")
    local = fetch(location)
    assert local.read_bytes() == b"x" * 100 and local.is_relative_to(Storage(where).root)
    assert fetch(location) == local  # the node's copy is reused

    fs = pyarrow.fs.FileSystem.from_uri(location)[0]  # someone overwrites the object in the bucket
    (writer,) = [n for n in store.listdir("students", "k2") if n.startswith(".by-")]
    with fs.open_output_stream(f"sweeps/fetch/students/k2/{writer}/student.pt") as f:
        f.write(b"y" * 100)
    node("c")
    with pytest.raises(OSError, match="does not match its entry's manifest"):
        fetch(location)
    assert not Storage(where).path("students", "k2", "student.pt").exists()  # nothing half-written is left


def test_published_files_read_back_pulled_and_discarded(s3_server, node):
    where = s3_server.format("files")
    node("a")
    store = Storage(where)
    path = store.path("sweeps", "s1", "front.json")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"points": []}))
    assert store.publish(path) == store.location("sweeps", "s1", "front.json")
    node("b")
    other = Storage(where)
    assert other.read_text("sweeps", "s1", "front.json") == '{"points": []}'
    assert other.read_text("sweeps", "s1", "absent.json") is None
    assert other.pull("sweeps", "s1", "front.json").read_text() == '{"points": []}'
    assert other.listdir("sweeps") == ["s1"] and other.listdir("nothing") == []
    node("a")
    store.discard(path)
    assert not path.exists() and store.read_text("sweeps", "s1", "front.json") is None


def test_a_directory_storage_copies_nothing(tmp_path):
    store = Storage(str(tmp_path / "runs"))
    entry, hit = store.entry("data", "k", lambda d: (d / "data.pt").write_bytes(b"1"))
    location = store.located(entry / "data.pt")
    assert location == str(tmp_path / "runs" / "data" / "k" / "data.pt") and fetch(location) == entry / "data.pt"
    assert store.publish(entry / "data.pt") == location


def test_a_one_off_file_is_read_from_a_private_copy_that_does_not_stay(s3_server, node, tmp_path):
    from orchestrator.io.storage import fetched_once

    node("driver")
    store = Storage(s3_server.format("once"))
    init = store.path("students", ".k.tmp", "init.pt")
    init.parent.mkdir(parents=True)
    init.write_bytes(b"weights")
    location = store.publish(init)
    with fetched_once(location) as path:
        assert path == init  # the node that wrote it reads its own file
    cache = node("worker")
    with fetched_once(location) as path:
        assert path.read_bytes() == b"weights" and not path.is_relative_to(cache)
    assert not path.exists() and not cache.exists()  # nothing left on the worker's node
    store.discard(init)
    assert store.listdir("students") == []  # nor in the bucket: not even the temporary directory's empty marker


def test_a_storage_sent_to_another_node_keeps_its_copy_in_that_nodes_cache(tmp_path, monkeypatch):
    import pickle

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "driver"))
    storage = Storage("s3://bucket/prefix?scheme=http")
    assert storage.root == tmp_path / "driver" / "s3" / "bucket" / "prefix"  # resolved (and cached) on the driver
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "node"))  # as a worker on another node sees its environment
    arrived = pickle.loads(pickle.dumps(storage))
    assert arrived == storage and arrived.root == tmp_path / "node" / "s3" / "bucket" / "prefix"


def test_a_nodes_copies_stay_under_its_limit_least_recently_used_first_and_come_back_from_the_bucket(s3_server, node, tmp_path,
                                                                                                     monkeypatch):
    """ORCHESTRATOR_CACHE_MAX_GB: the node's least recently used entry copies go first; one used in the last
    CACHE_KEEP_S stays whatever the size; an evicted entry is downloaded again, not rebuilt; a directory storage's
    entries (the storage itself) are never touched."""
    import time

    from orchestrator.core.environ import CACHE_MAX_ENV
    from orchestrator.io.storage import MANIFEST, cache_limit, evict

    store, builds = Storage(s3_server.format("lru")), []

    def build(d):
        builds.append(1)
        (d / "w.bin").write_bytes(os.urandom(1000))

    cache = node("lru")
    monkeypatch.setenv(CACHE_MAX_ENV, "0.0000025")  # 2,500 bytes: two entries and a bit
    assert cache_limit() == 2500
    for age, key in ((3000, "k1"), (2000, "k2"), (1000, "k3")):  # used 50, 33 and 17 minutes ago
        entry, _ = store.entry("students", key, build)
        os.utime(entry / MANIFEST, (time.time() - age, time.time() - age))
    assert (cache / "s3" / "sweeps" / "lru" / "students" / "k3").is_dir()  # none evicted yet: all within 15 minutes when built
    store.entry("students", "k4", build)  # 4,000 bytes now: the two least recently used go
    kept = sorted(p.name for p in (cache / "s3" / "sweeps" / "lru" / "students").iterdir())
    assert kept == ["k3", "k4"]
    entry, hit = store.entry("students", "k1", build)  # back from the bucket, not built again
    assert hit and builds == [1, 1, 1, 1] and (entry / "w.bin").stat().st_size == 1000
    assert not list(cache.rglob("*.evicted"))
    assert sorted(p.name for p in entry.parent.iterdir()) == ["k1", "k4"]  # k3, least recently used, made room for it
    assert evict(limit=0) == []  # k1 and k4 were used just now: kept even over the limit
    local = Storage(str(tmp_path / "dir"))  # a directory storage: its entries are the storage
    there, _ = local.entry("students", "k", build)
    os.utime(there / MANIFEST, (0, 0))
    evict(limit=0)
    assert (there / "w.bin").is_file()
    monkeypatch.setenv(CACHE_MAX_ENV, "lots")
    with pytest.raises(ValueError, match=r"\$ORCHESTRATOR_CACHE_MAX_GB = 'lots' is not a number of GB"):
        cache_limit()


_BUILD_AT_ONCE = """
import os, sys, time
from pathlib import Path
os.environ["ORCHESTRATOR_CACHE"] = sys.argv[2]
from orchestrator.io.storage import Storage
start = float(sys.argv[3])

def build(d):
    time.sleep(max(0.0, start - time.time()))  # both nodes built it, neither has uploaded yet
    # what each node builds differs (think GPU kernels), and in sizes that make their uploads overtake each other:
    # node a's first file is small and its second large, node b's the other way round
    small, large = os.urandom(1000), os.urandom(30_000_000)
    first, second = (small, large) if sys.argv[2].endswith("a") else (large, small)
    (d / "1.bin").write_bytes(first)
    (d / "2.bin").write_bytes(second)
    (d / "writer.txt").write_text(sys.argv[2])

entry, hit = Storage(sys.argv[1]).entry("students", "same", build)
print(hit, (entry / "writer.txt").read_text())
"""


def test_two_nodes_building_one_entry_at_once_leave_one_whole_entry(s3_server, tmp_path):
    """Two processes with caches of their own (two nodes) build the same entry at the same moment, each with other
    bytes: both finish, and a third node reads one whole entry, every file from the same writer."""
    import subprocess
    import sys
    import time

    where = s3_server.format("race")
    start = str(time.time() + 8)  # both processes imported and building by then
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD_AT_ONCE, where, str(tmp_path / name), start], text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy()) for name in ("a", "b")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert [o[0].split()[0] for o in outs] == ["False", "False"]  # each built it (neither saw the other's manifest)
    os.environ[CACHE_ENV] = str(tmp_path / "c")
    try:
        entry, hit = Storage(where).entry("students", "same", lambda d: pytest.fail("built a third time"))
    finally:
        del os.environ[CACHE_ENV]
    assert hit
    writer = (entry / "writer.txt").read_text()  # the files of one node, whole: each checked against its manifest
    assert writer in (str(tmp_path / "a"), str(tmp_path / "b"))
    built = Path(writer) / "s3" / "sweeps" / "race" / "students" / "same"
    assert all((entry / n).read_bytes() == (built / n).read_bytes() for n in ("1.bin", "2.bin"))
