"""Content-addressed cache entries in a directory storage: built once, whole or absent, safe when processes race
for a key."""

import json
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.core.keys import content_key
from orchestrator.io.storage import Storage


RACER = """
import sys, time
from orchestrator.io.storage import Storage

root, tag, start_at = sys.argv[1], sys.argv[2], float(sys.argv[3])

def build(d):
    (d / "a.txt").write_text(tag)
    time.sleep(0.3)  # a slow build: every racer is inside it at once
    (d / "b.txt").write_text(tag)

time.sleep(max(0.0, start_at - time.time()))
entry, hit = Storage(root).entry("students", "k", build)
print((entry / "a.txt").read_text(), (entry / "b.txt").read_text(), hit)
"""


def test_racing_processes_leave_one_whole_entry(tmp_path):
    start_at = time.time() + 3  # after every interpreter has started
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(i), str(start_at)],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    seen = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        seen.append(out.split())
    winner = (tmp_path / "students" / "k" / "a.txt").read_text()
    assert all(a == b == winner for a, b, _ in seen)  # everyone reads the same, whole entry
    assert [hit for _, _, hit in seen].count("False") >= 2  # they did race (found no entry, built one)
    assert sorted(p.name for p in (tmp_path / "students").iterdir()) == ["k"]  # no temporary directories left behind
    entry, hit = Storage(str(tmp_path)).entry("students", "k", lambda d: (_ for _ in ()).throw(AssertionError("rebuilt")))
    assert hit and entry == tmp_path / "students" / "k"
    manifest = json.loads((entry / ".complete").read_text())  # what a node downloading it checks
    assert manifest["key"] == "k" and sorted(manifest["files"]) == ["a.txt", "b.txt"]


def test_a_failed_build_leaves_nothing(tmp_path):
    def build(d: Path) -> None:
        (d / "half.txt").write_text("x")
        raise RuntimeError("boom")

    try:
        Storage(str(tmp_path)).entry("students", "k", build)
    except RuntimeError:
        pass
    assert list((tmp_path / "students").iterdir()) == []


def test_content_key_depends_on_every_part_and_not_on_dict_order():
    assert content_key({"a": 1, "b": 2}, 3) == content_key({"b": 2, "a": 1}, 3)
    assert content_key({"a": 1}, 3) != content_key({"a": 1}, 4) != content_key({"a": 2}, 4)
