"""How a layer larger than the device array is tiled onto it.

Weight (o, i) of an (out, in) layer sits on device (o mod R, i mod C) of the
R x C array: the array is reused over time like a tensor core, so one device's
error touches every tile.  Mapping and the chip simulator must agree on this.
"""

from __future__ import annotations

import numpy as np


def ring_index(shape: tuple[int, int], array: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the ring that holds each weight of a (out, in) layer."""
    out_f, in_f = shape
    rows, cols = array
    return np.arange(out_f)[:, None] % rows + np.zeros((1, in_f), dtype=np.int64), \
        np.zeros((out_f, 1), dtype=np.int64) + np.arange(in_f)[None, :] % cols
