"""The node's measurement gate: while the measurement service times a model, the training on its node pauses
between steps, so the timing runs on an idle machine without the service holding a core for the whole sweep
(`measure.isolation: pause`).

Two node-local files, two kinds of holder, the kernel's `flock` doing the counting:

- a **worker** (a training loop, a held-out evaluation) holds the room shared while it works, and at every
  step boundary looks for requests; if there is one, it lets go of the room, waits until every request is
  gone, and takes the room again;
- the **service** writes a request (a file named by its process id), takes the room exclusively (which it gets
  once every worker on the node stands between steps), measures, removes its request and lets go.

A worker that dies lets go of the room with its process (the kernel releases its lock); a request whose
service died is removed by the first worker that finds its process gone. DDP ranks decide together whether
to pause (`agree`: an all-reduce of the flag), so no rank waits inside a collective for a rank that paused.

    >>> import tempfile, time
    >>> gate = Gate(tempfile.mkdtemp())
    >>> with gate.worker() as w:
    ...     w.between_steps()  # nothing requested: on at once
    0.0
    >>> with gate.measuring() as window:
    ...     window.waited_s < 1.0
    True
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestrator.io.storage import cache_root

GATE_ENV = "ORCHESTRATOR_GATE"  # the node's gate directory (node-local: read on the node; default: in the node cache)
ROOM, REQUEST = "room.lock", "request-"
POLL_S = 0.002  # how often a paused worker looks whether the service is done, and the service whether it may start
_serial = itertools.count()


def gate_dir() -> Path:
    """This node's gate: $ORCHESTRATOR_GATE, else `gate/` in the node cache (`io.storage.cache_root`)."""
    return Path(os.environ.get(GATE_ENV) or cache_root() / "gate")


def alive(pid: int) -> bool:
    """Whether process `pid` of this node is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


@dataclass
class Window:
    """A measurement window: how long the service waited for the node's workers to pause, and whether they all
    did before its deadline (False: it measured beside a worker that did not reach a step boundary in time)."""

    waited_s: float = 0.0
    isolated: bool = True


class Worker:
    """A worker's hold on the room (see the module's docstring); `between_steps` at every step boundary."""

    def __init__(self, gate: "Gate", agree: Callable[[bool], bool] | None) -> None:
        self.gate, self.agree = gate, agree
        self.paused_s = 0.0  # time spent paused, in all
        self._fd = os.open(gate.room, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def between_steps(self) -> float:
        """Pause here while the service measures on this node; returns the seconds paused."""
        requested = self.gate.requested()
        if self.agree is not None:
            requested = self.agree(requested)
        if not requested:
            return 0.0
        t = time.perf_counter()
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        while self.gate.requested():
            time.sleep(POLL_S)
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # waits until the service has let go
        paused = time.perf_counter() - t
        self.paused_s += paused
        return paused

    def close(self) -> None:
        os.close(self._fd)  # lets go of the room


class Gate:
    """A node's gate, in directory `path` (created when first used)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else gate_dir()

    @property
    def room(self) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / ROOM

    def requested(self) -> bool:
        """Whether a live service asks the node to pause (a dead service's request is removed)."""
        try:
            names = [n for n in os.listdir(self.path) if n.startswith(REQUEST)]
        except FileNotFoundError:
            return False
        live = False
        for name in names:
            if alive(int(name[len(REQUEST):].split("-")[0])):
                live = True
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path / name)
        return live

    @contextlib.contextmanager
    def worker(self, agree: Callable[[bool], bool] | None = None) -> Iterator[Worker]:
        """Hold the room while working; `agree(flag) -> flag` makes the pause a decision of all DDP ranks."""
        w = Worker(self, agree)
        try:
            yield w
        finally:
            w.close()

    @contextlib.contextmanager
    def measuring(self, deadline_s: float = 120.0) -> Iterator[Window]:
        """Ask the node's workers to pause, wait (at most `deadline_s`) until they all have, and hold them paused."""
        request = self.path / f"{REQUEST}{os.getpid()}-{next(_serial)}"
        fd = os.open(self.room, os.O_RDWR | os.O_CREAT, 0o666)
        request.touch()
        window, t = Window(), time.perf_counter()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.perf_counter() - t > deadline_s:
                        window.isolated = False
                        break
                    time.sleep(POLL_S)
            window.waited_s = time.perf_counter() - t
            yield window
        finally:
            request.unlink(missing_ok=True)
            os.close(fd)  # lets go of the room


@contextlib.contextmanager
def working(agree: Callable[[bool], bool] | None = None) -> Iterator[Worker]:
    """This node's gate held as a worker (`Gate().worker`)."""
    with Gate().worker(agree) as w:
        yield w
