"""Bad user input as one line: `ConfigError`, and how its messages echo values and suggest fixes; `RayDied`: the
sweep's own Ray stopped under it."""

from __future__ import annotations

import difflib
import reprlib
from typing import Any

MAX_MESSAGE = 1000  # characters of a ConfigError; a longer one keeps its head (the key) and its tail (the fix)


class ConfigError(ValueError):
    r"""Bad user input: the message is one line naming the source, the key, the value and the fix.

    Whatever is passed in, the message is one line of at most `MAX_MESSAGE` characters:
        >>> str(ConfigError("a.yaml: `x` must be a number,\n got " + "9" * 2000 + "; fix it")).count("\n"), len(str(ConfigError("y" * 9999)))
        (0, 1000)
    """

    def __init__(self, message: str) -> None:
        line = " ".join(str(message).split())
        if len(line) > MAX_MESSAGE:
            head = MAX_MESSAGE * 2 // 3
            line = f"{line[:head]} ... {line[-(MAX_MESSAGE - head - 5):]}"
        super().__init__(line)


class RayDied(RuntimeError):
    """The Ray a sweep started for itself stopped under it (its raylet ended from outside). The sweep wound down
    as on Ctrl-C: every trial that ended is recorded, and `--resume sweep_id` finishes it (`sweep_id` is None when
    Ray stopped before the trials began). The process can start another sweep."""

    def __init__(self, message: str, sweep_id: str | None = None) -> None:
        super().__init__(message)
        self.sweep_id = sweep_id


class StorageFull(RuntimeError):
    """A sweep's storage (or the node's cache) ran out of space mid-sweep: the sweep stopped, every trial that ended
    before is recorded, nothing half-written is ever read, and `--resume sweep_id` finishes it once there is room
    (the trials that could not write run again)."""

    def __init__(self, message: str, sweep_id: str | None = None) -> None:
        super().__init__(" ".join(str(message).split()))
        self.sweep_id = sweep_id


NO_SPACE = ("[Errno 28]", "No space left on device", "database or disk is full")  # how a full disk reads in an error


def no_space(error: BaseException | str | None) -> bool:
    """Whether `error` (or what caused it), or an error's text, says a disk was full.

        >>> no_space(OSError(28, "No space left on device")), no_space("ValueError: bad"), no_space(None)
        (True, False, False)
    """
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, str):
            return any(mark in error for mark in NO_SPACE)
        if getattr(error, "errno", None) == 28 or any(mark in str(error) for mark in NO_SPACE):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


_SHOW = reprlib.Repr()  # Python 3.11's takes no arguments
_SHOW.maxlevel, _SHOW.maxdict, _SHOW.maxlist, _SHOW.maxtuple, _SHOW.maxset = 3, 6, 6, 6, 6
_SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 60, 60, 40


def show(value: Any) -> str:
    """`value` as an error message echoes it: its repr, cut short at every level (a value a YAML alias
    nests a million times over is printed in a few dozen characters, and never built in full).

        >>> show("x" * 100), show(list(range(100))), show({"a": {"b": {"c": {"d": 1}}}})
        ("'xxxxxxxxxxxxxxxxxxxxxxxxxxx...xxxxxxxxxxxxxxxxxxxxxxxxxxxx'", '[0, 1, 2, 3, 4, 5, ...]', "{'a': {'b': {'c': {...}}}}")
    """
    return _SHOW.repr(value)


def did_you_mean(name: Any, known: Any) -> str:
    """' (did you mean `pipeline`?)' when `name` is close to one of `known`, else ''.

        >>> did_you_mean("pipline", ["pipeline", "params"]), did_you_mean("zzz", ["pipeline"])
        (' (did you mean `pipeline`?)', '')
    """
    close = difflib.get_close_matches(str(name), [str(k) for k in known], n=1, cutoff=0.6)
    return f" (did you mean `{close[0]}`?)" if close else ""


def one_line(error: BaseException) -> str:
    """An exception's message on one line (for messages that quote it)."""
    return " ".join(str(error).split())
