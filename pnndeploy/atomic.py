"""Write files so a crash leaves the old file or none, never half of a new one."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import Iterator

#: Temporary files being written right now; a signal handler that must exit at once removes them.
_ACTIVE: set[Path] = set()


def remove_active_temporaries() -> None:
    """Delete every temporary file of a write still in progress (for a SIGTERM handler about to exit)."""
    for path in list(_ACTIVE):
        try:
            path.unlink()
        except OSError:
            pass


def _create_temporary(target: Path, mode: int = 0o666) -> Path:
    """Create the hidden temporary file beside ``target``, registered for cleanup *before* it exists.

    A SIGTERM handler (or Ctrl-C) landing anywhere in here finds the path already registered, so
    it never leaves an unregistered file behind (``mkstemp`` then register had a window between the
    two; masking signals around it would not cover a write from another thread, since a process's
    SIGTERM is handled in the main thread whatever another thread masks).  ``O_EXCL`` makes the
    name ours; the mode is the ordinary 0666 less the umask, as for any file the user writes.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    for _ in range(100):
        # hidden (leading '.') and ending in .tmp: readers and `fleet list` skip it, also when a killed
        # process could not remove it
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        _ACTIVE.add(tmp)
        try:
            fd = os.open(tmp, flags, mode)
        except FileExistsError:
            _ACTIVE.discard(tmp)
            continue
        except OSError:
            _ACTIVE.discard(tmp)
            raise
        except BaseException:         # Ctrl-C around the call: the file may already exist, and is ours
            with contextlib.suppress(OSError):
                tmp.unlink()
            _ACTIVE.discard(tmp)
            raise
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(target.parent))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    The temporary file lives in the same folder (same filesystem, so the rename
    is atomic) and is removed if the body raises or the process is interrupted
    before the rename.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    try:
        tmp_path = _create_temporary(target)
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:   # say which file could not be written
            raise OSError(exc.errno, exc.strerror or str(exc), str(target)) from exc
        raise
    finally:
        if tmp_path is not None:
            if tmp_path.exists():
                tmp_path.unlink()
            _ACTIVE.discard(tmp_path)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_new_private(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a *new* owner-only (0600) file ``target``: whole or not at all, never over an existing file.

    For secrets (a chip server's token): the file is written beside the target with mode 0600 from its
    creation (never readable by others, even for a moment), then hard-linked into place, which fails when
    another process made ``target`` meanwhile (FileExistsError) instead of overwriting it.
    """
    target = Path(target)
    tmp = _create_temporary(target, 0o600)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.link(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
        _ACTIVE.discard(tmp)
