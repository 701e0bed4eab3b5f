"""Random streams owned by one device, so a chip draws the same numbers alone or in any fleet."""

from __future__ import annotations

import hashlib

import numpy as np


def device_rng(device_id: str, seed: int, *extra: int) -> np.random.Generator:
    """A random stream owned by one device: a function of its name, ``seed`` and ``extra`` only.

    Never the global RNG, so a device draws the same numbers alone or in a fleet
    (fabrication, detector noise, ageing walks all use it).
    """
    key = int.from_bytes(hashlib.sha256(device_id.encode("utf-8")).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([int(seed), key, *extra]))
