"""The chip server's wire format: JSON over HTTP/1.1, arrays as base64 of little-endian float64.

Why JSON with base64 arrays: any language a station is scripted in reads it, a
request can be typed by hand with curl, and decoding it can never run code (no
pickle, no object arrays).  Every array is ``{"dtype": "<f8", "shape": [...],
"data": BASE64}``; ``<f4`` is accepted on input.  The limits below bound what either
side accepts, so a malformed or hostile peer cannot exhaust memory.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

import numpy as np

from pnndeploy.backends.base import BackendError
from pnndeploy.untrusted import brief, loads_json

#: Protocol version in every path (/v1/...); a server of another version answers 404.
PROTOCOL = "v1"
#: Largest request body a server accepts and largest reply a client reads, bytes.
MAX_BODY_BYTES = 16 * 1024 * 1024
#: Largest array either side decodes, values.
MAX_ARRAY_VALUES = 1 << 20          # a 1024 x 1024 layer; 11 MiB of base64, under MAX_BODY_BYTES
ACCEPTED_DTYPES = {"<f8": np.dtype("<f8"), "<f4": np.dtype("<f4")}
#: The dtype of a bit mask (np.packbits, little bit order): a re-programmed layer's changed settings.
MASK_DTYPES = {"|u1": np.dtype("u1")}
#: Deepest nesting of lists and objects either side accepts in a message (the protocol needs 4).
MAX_JSON_DEPTH = 32


class WireError(BackendError):
    """A message that does not follow the protocol."""


def encode_array(values: np.ndarray) -> dict[str, Any]:
    """``values`` as a wire array (float64, little-endian; a uint8 mask as |u1)."""
    values = np.asarray(values)
    dtype = "|u1" if values.dtype == np.uint8 else "<f8"
    array = np.ascontiguousarray(values, dtype=dtype)
    return {"dtype": dtype, "shape": list(array.shape), "data": base64.b64encode(array.tobytes()).decode("ascii")}


def decode_array(obj: Any, name: str, ndim: int | None = None, max_values: int = MAX_ARRAY_VALUES,
                 dtypes: dict[str, np.dtype] = ACCEPTED_DTYPES) -> np.ndarray:
    """A wire array back as float64 (a mask as uint8); WireError naming ``name`` for anything malformed."""
    if not isinstance(obj, dict) or set(obj) != {"dtype", "shape", "data"}:
        raise WireError(f"'{name}' is not an array object {{dtype, shape, data}}")
    dtype = dtypes.get(obj["dtype"]) if isinstance(obj["dtype"], str) else None
    if dtype is None:
        raise WireError(f"'{name}' has dtype {brief(obj['dtype'], 40)}; here the protocol carries "
                        f"{' or '.join(dtypes)} only")
    shape = obj["shape"]
    if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                              for n in shape) or len(shape) > 4:
        raise WireError(f"'{name}' has shape {shape!r}; expected a list of up to 4 sizes >= 0")
    if ndim is not None and len(shape) != ndim:
        raise WireError(f"'{name}' has {len(shape)} dimensions, expected {ndim}")
    count = math.prod(shape)
    if count > max_values:
        raise WireError(f"'{name}' holds {count} values, more than the limit {max_values}")
    if not isinstance(obj["data"], str) or len(obj["data"]) > 4 * (count * dtype.itemsize + 2) // 3 + 4:
        raise WireError(f"'{name}' data is not base64 text of {count} values")
    try:
        raw = base64.b64decode(obj["data"], validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"'{name}' data is not valid base64") from None
    if len(raw) != count * dtype.itemsize:
        raise WireError(f"'{name}' data holds {len(raw)} bytes, but shape {shape} of {obj['dtype']} needs "
                        f"{count * dtype.itemsize}")
    values = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return values.astype(np.float64) if dtype.kind == "f" else values.copy()


def field_array(doc: dict, arrays: dict[str, np.ndarray], name: str, ndim: int | None = None,
                finite: bool = False, mask: bool = False) -> np.ndarray:
    """Field ``name`` of a message, whichever wire brought it: a decoded frame array (``arrays``) or a JSON
    array object in ``doc``; float64 (uint8 for a ``mask``), NaN and inf refused where ``finite``."""
    dtypes = MASK_DTYPES if mask else ACCEPTED_DTYPES
    if name not in arrays:
        values = decode_array(doc.get(name), name, ndim, dtypes=dtypes)
    else:
        values = arrays[name]
        if values.dtype.str not in dtypes:
            raise WireError(f"'{name}' has dtype {values.dtype.str}; here the protocol carries "
                            f"{' or '.join(dtypes)} only")
        if ndim is not None and values.ndim != ndim:
            raise WireError(f"'{name}' has {values.ndim} dimensions, expected {ndim}")
        values = values.astype(np.float64, copy=False) if not mask else values
    if finite and not np.all(np.isfinite(values)):
        raise WireError(f"'{name}' holds NaN or inf; send finite values")
    return values


def loads_object(raw: bytes, what: str) -> dict[str, Any]:
    """``raw`` decoded as a JSON object nested at most :data:`MAX_JSON_DEPTH` deep; WireError otherwise.

    Why the depth: a message nested thousands deep is a few kilobytes, and every later
    recursive walk over it (an encoder, a repr in an error message) would overflow the
    stack; the protocol's messages are 4 deep.  The same bounded parser reads every JSON of a file.
    """
    try:
        doc = loads_json(raw, MAX_JSON_DEPTH)
    except (ValueError, UnicodeDecodeError) as exc:
        problem = f"nests lists or objects deeper than {MAX_JSON_DEPTH} levels" if "nested" in str(exc) \
            else "is not JSON"
        raise WireError(f"{what} {problem}") from None
    if not isinstance(doc, dict):
        raise WireError(f"{what} is not a JSON object")
    return doc
