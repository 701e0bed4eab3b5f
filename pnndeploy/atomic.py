"""Write files so a crash leaves the old file or none, never half of a new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
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
        # hidden (leading '.') and ending in .tmp: readers and `fleet list` skip it, also when a killed
        # process could not remove it
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        tmp_path = Path(tmp)
        _ACTIVE.add(tmp_path)
        os.close(fd)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
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
