"""Reading what someone else may have made: bounded reads, bounded JSON, bounded echoes of values.

Profiles, models, configs, process specs, data sets and sweep results may come from anyone
(DESIGN.md, "Trust boundaries"), so no reader may block on a special file, allocate beyond a
limit the format allows, or print an unbounded value in a message.  These helpers are the
foundation every reader shares; the format-specific limits live beside each format.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

#: Nesting depth of any JSON value pnndeploy reads (its own metadata nests at most 5 deep).
MAX_JSON_DEPTH = 32
#: Echoed values are cut to this many characters in messages.
ECHO_CHARS = 80


class FileProblem(ValueError):
    """A path that must not be read: not a regular file, or larger than its format's limit.

    ``text`` says what is wrong without naming the file; callers prefix their own where and fix.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def size_text(n: int) -> str:
    """``n`` bytes for a person: 1 KiB = 1024 bytes."""
    for unit, factor in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.4g} {unit}"
    return f"{n} bytes"


def kind_problem(mode: int) -> str | None:
    """What a file of ``mode`` is when it is not a regular file (None when it is one)."""
    if stat.S_ISREG(mode):
        return None
    what = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return f"is {what}, not a regular file"


def regular_file_problem(path: str | os.PathLike[str], max_bytes: int | None = None) -> str | None:
    """Why ``path`` must not be opened (a FIFO would block, a device never ends, too large), else None.

    Checked with ``os.stat`` before anything opens the file; a missing file is the caller's to report
    (FileNotFoundError propagates).
    """
    info = os.stat(path)
    problem = kind_problem(info.st_mode)
    if problem is None and max_bytes is not None and info.st_size > max_bytes:
        problem = f"is {size_text(info.st_size)}, more than the {size_text(max_bytes)} such a file may hold"
    return problem


def read_bounded(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes``; FileProblem otherwise.

    Opened non-blocking and checked on the open descriptor, so a path swapped for a FIFO after a
    check still cannot block; never reads more than ``max_bytes + 1`` bytes, even from a file that
    grows.  OSError (missing, unreadable) propagates for the caller to word.
    """
    fd = os.open(Path(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        problem = kind_problem(info.st_mode)
        if problem is not None:
            raise FileProblem(problem)
        if info.st_size > max_bytes:
            raise FileProblem(f"is {size_text(info.st_size)}, more than the {size_text(max_bytes)} "
                              "such a file may hold")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > max_bytes:
            raise FileProblem(f"grew past the {size_text(max_bytes)} such a file may hold while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, counted without recursion; stops once past ``limit``."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH, max_bytes: int | None = None) -> Any:
    """``json.loads`` for text from outside: ValueError (one line) when too large, too deep or not JSON.

    NaN and Infinity are refused (pnndeploy never writes them).  A value nested near Python's recursion
    limit parses but crashes whatever walks it next (printing, ``json.dumps``), so depth is bounded here.
    """
    if max_bytes is not None and len(text) > max_bytes:
        raise ValueError(f"is {size_text(len(text))}, more than the {size_text(max_bytes)} allowed")
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError(f"is nested more than {max_depth} levels deep") from None
    except ValueError as exc:   # JSONDecodeError, a refused constant, a too-long integer
        raise ValueError(f"is not valid JSON ({brief(str(exc), 100, quote=False)})") from None
    if json_depth(value, max_depth) > max_depth:
        raise ValueError(f"is nested more than {max_depth} levels deep")
    return value


#: Control characters a terminal acts on (ESC, CSI, carriage return, ...); tab and newline are plain text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def control_text(value: Any, limit: int = 1_000_000) -> str | None:
    """The first text in ``value`` (a str, or any JSON value: keys and items) holding a control character.

    Printed, such text rewrites the user's terminal (escape sequences, a carriage return over a
    line), so text from a file is refused rather than shown.  Walks at most ``limit`` items.
    """
    stack = [value]
    while stack and limit > 0:
        limit -= 1
        item = stack.pop()
        if isinstance(item, str):
            if _CONTROL.search(item):
                return item
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxset = 3, 6, 6, 4, 4
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = ECHO_CHARS, ECHO_CHARS, 40


def brief(value: Any, limit: int = ECHO_CHARS, quote: bool = True, tail: bool = False) -> str:
    """A value for a message: ``repr`` (or the text itself, ``quote=False``) cut to ``limit`` characters.

    Bounded whatever the value: a YAML alias bomb or a megabyte string costs a few hundred characters
    (reprlib stops at a few levels and items), never its full expansion.  ``tail`` keeps the end of a
    text instead of its start (a path's file name).
    """
    if tail and isinstance(value, str) and len(value) > limit:
        text = "..." + " ".join(value[-limit * 2:].split())[-(limit - 3):]
        return repr(text) if quote else escape_controls(text)
    if quote:
        text = _REPR.repr(value)
    else:
        text = escape_controls(str(value)[: limit * 4])
    text = " ".join(text.split())  # one line
    return text if len(text) <= limit else text[: limit - 3] + "..."


def escape_controls(text: str) -> str:
    """``text`` with every control character a terminal acts on written as an escape (``\\x1b``)."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


__all__ = ["FileProblem", "MAX_JSON_DEPTH", "brief", "control_text", "escape_controls", "json_depth", "kind_problem",
           "loads_json", "read_bounded", "regular_file_problem", "size_text"]
