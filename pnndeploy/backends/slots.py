"""What each layer slot of a served chip holds, under a version that changes whenever the slot is programmed.

Why versions: in-situ training re-programs a layer at every step, and most of its
settings stay on the same DAC code; a client that remembered what it last sent could
send only the changed ones, but its memory goes stale when the server restarts or
another client programs the slot.  So the server names every program it applies
(``BOOT-N``: a random token per server process and a counter), the client sends back
the version it believes the slot holds, and a change (or nothing) relative to it is
applied only when that is still the slot's version; otherwise the answer is 409 and
the client re-sends the full settings.
"""

from __future__ import annotations

import secrets
from typing import Any, Sequence

import numpy as np

from pnndeploy.backends.base import BackendError, ChipBackend, LayerProgram


class Stale(BackendError):
    """The version a client sent is not what the slot holds (HTTP 409): re-send the full settings."""


class Slots:
    """The served chip's slots: version, weight shape and settings last programmed, per slot."""

    def __init__(self, chip: ChipBackend) -> None:
        self.chip = chip
        self.boot = secrets.token_hex(6)
        self.counter = 0
        self.held: dict[int, tuple[str, tuple[int, int], np.ndarray]] = {}

    def program(self, programs: Sequence[LayerProgram]) -> list[str]:
        """Program the chip and name each program; a failure half-way forgets every slot it touched."""
        for p in programs:
            self.held.pop(int(p.index), None)
        self.chip.program(programs)
        versions = []
        for p in programs:
            self.counter += 1
            versions.append(f"{self.boot}-{self.counter}")
            self.held[int(p.index)] = (versions[-1], tuple(int(n) for n in p.weight_shape),
                                       np.array(p.settings, np.float64))
        return versions

    def ensure(self, layer: int, shape: Any, base: Any, settings: np.ndarray | None,
               mask: np.ndarray | None, values: np.ndarray | None) -> tuple[str, bool]:
        """(the slot's version, whether it was programmed) after what the client sent: full ``settings``,
        the ``values`` of the settings ``mask`` marks as changed since version ``base``, or nothing
        (the slot must still hold ``base``)."""
        if settings is not None:
            if shape is None:
                raise BackendError("full settings need 'weight_shape' [out, in]")
            return self.program([LayerProgram(layer, shape, settings)])[0], True
        held = self.held.get(layer)
        if held is None or not isinstance(base, str) or base != held[0]:
            raise Stale(f"layer slot {layer} does not hold program {str(base)[:40]!r} (the server restarted or "
                        "another client programmed it); send the full settings")
        if mask is None and values is None:
            return held[0], False
        if mask is None or values is None:
            raise BackendError("a change of settings needs both 'mask' and 'values'")
        _, held_shape, old = held
        if shape is not None and tuple(shape) != held_shape:
            raise BackendError(f"layer slot {layer} holds a {held_shape} layer, not {tuple(shape)}; "
                               "send the full settings")
        changed = _unpack(mask, old.size)
        if int(changed.sum()) != values.size or values.ndim != 1:
            raise BackendError(f"'mask' marks {int(changed.sum())} changed settings but 'values' holds "
                               f"{values.size}")
        new = old.reshape(-1).copy()
        new[changed] = values
        return self.program([LayerProgram(layer, held_shape, new.reshape(old.shape))])[0], True


def _unpack(mask: np.ndarray, size: int) -> np.ndarray:
    """A little-bit-order packed mask of ``size`` bits as booleans; its padding bits must be 0."""
    if mask.ndim != 1 or mask.size != -(-size // 8):
        raise BackendError(f"'mask' must be {-(-size // 8)} bytes (one bit per setting, {size} settings)")
    bits = np.unpackbits(mask, bitorder="little")
    if bits[size:].any():
        raise BackendError("'mask' sets bits beyond the layer's settings")
    return bits[:size].astype(bool)


def pack_changes(old: np.ndarray, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, values): the settings of ``new`` that differ from ``old``, as the server's :meth:`Slots.ensure`
    takes them."""
    changed = (np.ascontiguousarray(old, "<f8").view("<i8") != np.ascontiguousarray(new, "<f8").view("<i8"))
    changed = changed.reshape(-1)                       # bit patterns: -0.0 and 0.0 differ, as on the wire
    return np.packbits(changed, bitorder="little"), new.reshape(-1)[changed]
