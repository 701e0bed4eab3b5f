"""The chip server's binary wire: several raw little-endian arrays and a few JSON fields in one body.

Why: in-situ training exchanges a layer's settings, its inputs and its outputs at every
step; as JSON + base64 that was most of the cost of a step (issue 26).  A frame carries
the same arrays as their raw bytes, and keeps the scalar fields (layer, version...) as
a small JSON object, so the one strict JSON parser reads them.  Byte layout (all
integers little-endian; README, "The binary wire")::

    frame   = "PNNA" | version u8 (=1) | arrays u8 | reserved u16 (=0) | meta_bytes u32 | meta | array*
    meta    = a JSON object (UTF-8, at most MAX_META_BYTES)
    array   = name_bytes u8 | dtype u8 | ndim u8 | reserved u8 (=0) | name | size u32 * ndim | data
    data    = prod(sizes) * itemsize bytes, C order; dtype 1 = <f8, 2 = <f4, 3 = u1

The peer is hostile: every count, code, size and length is checked against the limits
below *before* anything is allocated (an array's bytes are copied out of the body only
once they are known to be there and within :data:`~pnndeploy.backends.wire.MAX_ARRAY_VALUES`),
and the frame must end exactly where its last array does.  Never a pickle: decoding is
``numpy.frombuffer`` with an explicit dtype, then a copy.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any, Mapping

import numpy as np

from pnndeploy.backends.wire import MAX_ARRAY_VALUES, WireError, encode_array, loads_object

#: Content type of a binary body; its last part is the frame version.
BINARY_TYPE = "application/vnd.pnndeploy.arrays.v1"


def is_binary(content_type: str) -> bool:
    """Whether a Content-Type header names the binary wire (its parameters and case ignored)."""
    return content_type.split(";")[0].strip().lower() == BINARY_TYPE


def json_message(fields: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The same message on the JSON wire: the fields with each array as a base64 array object."""
    return {**fields, **{name: encode_array(a) for name, a in arrays.items()}}
MAGIC, VERSION = b"PNNA", 1
#: Hard limits of a frame: arrays, JSON bytes, name bytes, dimensions.
MAX_ARRAYS, MAX_META_BYTES, MAX_NAME_BYTES, MAX_NDIM = 8, 4096, 32, 4
#: The dtypes a frame may carry, by code (little-endian only; u1 carries bit masks).
DTYPES = {1: np.dtype("<f8"), 2: np.dtype("<f4"), 3: np.dtype("u1")}
_CODES = {dtype.str: code for code, dtype in DTYPES.items()}
_HEAD, _ARRAY = struct.Struct("<4sBBHI"), struct.Struct("<BBBB")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


def encode_frame(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    """``meta`` (JSON-able) and ``arrays`` (uint8 as u1, float32 as <f4, anything else as <f8) as one frame."""
    if len(arrays) > MAX_ARRAYS:
        raise WireError(f"a frame carries at most {MAX_ARRAYS} arrays, not {len(arrays)}")
    head = json.dumps(dict(meta), allow_nan=False, separators=(",", ":")).encode()
    if len(head) > MAX_META_BYTES:
        raise WireError(f"a frame's JSON fields take {len(head)} bytes, more than {MAX_META_BYTES}")
    parts = [_HEAD.pack(MAGIC, VERSION, len(arrays), 0, len(head)), head]
    for name, values in arrays.items():
        array = np.asarray(values)
        kind = {np.dtype(np.uint8): "u1", np.dtype(np.float32): "<f4"}.get(array.dtype, "<f8")
        array = array.astype(kind, order="C", copy=False)     # (ascontiguousarray makes a scalar 1-d)
        if not _NAME.fullmatch(name) or len(name) > MAX_NAME_BYTES or array.ndim > MAX_NDIM:
            raise WireError(f"array {name!r} of {array.ndim} dimensions cannot go in a frame")
        parts += [_ARRAY.pack(len(name), _CODES[array.dtype.str], array.ndim, 0), name.encode(),
                  struct.pack(f"<{array.ndim}I", *array.shape), array.tobytes()]
    return b"".join(parts)


class _Reader:
    """A cursor over an untrusted body: every read says what it wanted and where when the bytes are not there."""

    def __init__(self, raw: bytes, what: str) -> None:
        self.raw, self.at, self.what = memoryview(raw), 0, what

    def take(self, size: int, field: str) -> memoryview:
        if size > len(self.raw) - self.at:
            raise WireError(f"{self.what} is truncated: {field} needs {size} bytes at byte {self.at}, "
                            f"only {len(self.raw) - self.at} left")
        self.at += size
        return self.raw[self.at - size:self.at]


def decode_frame(raw: bytes, what: str, max_values: int = MAX_ARRAY_VALUES) -> tuple[dict, dict[str, np.ndarray]]:
    """(JSON fields, arrays) of a frame; WireError naming ``what`` and the byte for anything malformed."""
    reader = _Reader(raw, what)
    magic, version, count, reserved, meta_bytes = _HEAD.unpack(reader.take(_HEAD.size, "the frame header"))
    if magic != MAGIC:
        raise WireError(f"{what} is not a pnndeploy frame (it does not start with {MAGIC.decode()!r})")
    if version != VERSION:
        raise WireError(f"{what} is a frame of version {version}; this side speaks version {VERSION} "
                        f"({BINARY_TYPE})")
    if reserved or count > MAX_ARRAYS or meta_bytes > MAX_META_BYTES:
        raise WireError(f"{what}: frame header claims {count} arrays (limit {MAX_ARRAYS}) and {meta_bytes} bytes of "
                        f"fields (limit {MAX_META_BYTES}), reserved {reserved} (must be 0)")
    meta = loads_object(bytes(reader.take(meta_bytes, "the JSON fields")), f"{what}'s fields")
    arrays: dict[str, np.ndarray] = {}
    for k in range(count):
        name, array = _decode_array(reader, f"{what} array {k}", max_values)
        if name in arrays or name in meta:
            raise WireError(f"{what} carries {name!r} twice")
        arrays[name] = array
    if reader.at != len(reader.raw):
        raise WireError(f"{what} has {len(reader.raw) - reader.at} trailing bytes after its last array "
                        f"(byte {reader.at}); a frame ends with its last array")
    return meta, arrays


def _decode_array(reader: _Reader, where: str, max_values: int) -> tuple[str, np.ndarray]:
    """One array of a frame, its sizes checked before its bytes are touched."""
    name_bytes, code, ndim, reserved = _ARRAY.unpack(reader.take(_ARRAY.size, f"{where}'s header"))
    if name_bytes > MAX_NAME_BYTES or ndim > MAX_NDIM or reserved:
        raise WireError(f"{where}: header claims a {name_bytes}-byte name (limit {MAX_NAME_BYTES}), {ndim} "
                        f"dimensions (limit {MAX_NDIM}), reserved {reserved} (must be 0)")
    dtype = DTYPES.get(code)
    if dtype is None:
        raise WireError(f"{where}: dtype code {code} is unknown; a frame carries 1 (<f8), 2 (<f4) or 3 (u1), "
                        "little-endian only")
    name = bytes(reader.take(name_bytes, f"{where}'s name")).decode("ascii", "replace")
    if not _NAME.fullmatch(name):
        raise WireError(f"{where}: name {name[:MAX_NAME_BYTES]!r} is not lower-case letters, digits and _")
    shape = struct.unpack(f"<{ndim}I", reader.take(4 * ndim, f"{where}'s sizes"))
    count = math.prod(shape)          # Python integers: no overflow, and 4 sizes of 2^32 at most
    if count > max_values:
        raise WireError(f"{where} ({name}): shape {list(shape)} holds {count} values, more than the limit "
                        f"{max_values}")
    data = reader.take(count * dtype.itemsize, f"{where} ({name})'s {count} values")
    return name, np.frombuffer(data, dtype=dtype, count=count).reshape(shape).copy()
