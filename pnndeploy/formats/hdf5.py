"""How pnndeploy writes and reads HDF5: file-format bounds, checksummed datasets, typed attribute readers.

Shared by every HDF5 file the tool writes (device profiles, deployments), so a
damaged file is refused the same way wherever it is read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import h5py
import numpy as np

#: HDF5 file-format bounds of written files: 1.10 formats carry checksums of the file's internal
#: structure, so most damaged files give a clean error instead of confusing the HDF5 library
#: (readable by HDF5 >= 1.10, h5dump and HDFView included).
HDF5_LIBVER = ("v110", "v110")


def h5_array_options(array: np.ndarray) -> dict[str, Any]:
    """Dataset options for an array: a Fletcher-32 checksum (one chunk) so damaged values are refused."""
    if array.ndim == 0 or array.size == 0:
        return {}
    # one chunk for ordinary arrays; HDF5 limits a chunk to 4 GiB, so let it split huge ones
    return {"chunks": array.shape if array.nbytes <= 2**26 else True, "fletcher32": True}


def attr_str(obj: h5py.HLObject, name: str) -> str | None:
    """A text attribute as str; None when it is missing, not text, or not valid UTF-8."""
    value = obj.attrs.get(name)
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "OSU":
        value = value[()]
    return _decode(value)


def _decode(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # h5py decodes bad bytes to lone surrogates, which nothing can print
        except UnicodeEncodeError:
            return None
        return value
    return None


def _attr_number(obj: h5py.HLObject, name: str) -> Any:
    """A numeric scalar attribute (a 1-element array counts), or None; booleans are not numbers."""
    value = obj.attrs.get(name)
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(())[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return value


def attr_int(obj: h5py.HLObject, name: str) -> int | None:
    value = _attr_number(obj, name)
    return int(value) if isinstance(value, (int, np.integer)) else None


def attr_float(obj: h5py.HLObject, name: str) -> float | None:
    value = _attr_number(obj, name)
    return None if value is None else float(value)


def parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else None
