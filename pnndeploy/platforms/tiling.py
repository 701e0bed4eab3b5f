"""How a layer larger than the device array is tiled onto it.

Weight (o, i) of an (out, in) layer sits on device (o mod R, i mod C) of the
R x C array: the array is reused over time like a tensor core, so one device's
error touches every tile.  Mapping and the chip simulator must agree on this.
"""

from __future__ import annotations

import functools

import numpy as np


#: Largest layer (weights) whose ring indices are kept: 2 x 8 bytes a weight, 64 shapes at most (2 MiB each);
#: a larger layer's are made anew (its mapping costs far more than that), so no client can pin much memory.
CACHED_WEIGHTS = 1 << 17


def ring_index(shape: tuple[int, int], array: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the ring that holds each weight of a (out, in) layer (read-only arrays, made once per
    shape and array up to :data:`CACHED_WEIGHTS`: in-situ training maps every layer at every step)."""
    key = (int(shape[0]), int(shape[1]), int(array[0]), int(array[1]))
    return _ring_index(*key) if key[0] * key[1] <= CACHED_WEIGHTS else _ring_index.__wrapped__(*key)


@functools.lru_cache(maxsize=64)
def _ring_index(out_f: int, in_f: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    ri = np.arange(out_f)[:, None] % rows + np.zeros((1, in_f), dtype=np.int64)
    ci = np.zeros((out_f, 1), dtype=np.int64) + np.arange(in_f)[None, :] % cols
    ri.flags.writeable = ci.flags.writeable = False
    return ri, ci
