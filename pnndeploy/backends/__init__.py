"""Chip backends: how pnndeploy reaches a chip on a station, found by the kind a profile names.

Built in: ``http`` (a chip server on the network, :mod:`pnndeploy.backends.http`;
`pnndeploy chip serve` is one) and ``simulated`` (a simulated profile played in this
process).  A lab adds its own station without forking pnndeploy: a class deriving
from :class:`~pnndeploy.backends.base.ChipBackend`, registered in its package's
metadata under the entry point group ``pnndeploy.backends``::

    [project.entry-points."pnndeploy.backends"]
    mystation = "mylab.station:MyStationBackend"

and a profile whose ``backend`` group says ``kind = "mystation"``.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any, Mapping

from pnndeploy.backends.base import BackendError, ChipBackend, ChipInfo, LayerProgram, check_chip
from pnndeploy.backends.credentials import Trust

#: The entry point group third-party backends register under.
ENTRY_POINT_GROUP = "pnndeploy.backends"
BUILT_IN = {"http": "pnndeploy.backends.http:HttpBackend",
            "simulated": "pnndeploy.backends.simulated:SimulatedChip"}


def _load(target: str, kind: str) -> type[ChipBackend]:
    module, _, name = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {kind!r} ({target}) cannot be loaded: {exc}; reinstall the package "
                           "that provides it") from None
    if not (isinstance(cls, type) and issubclass(cls, ChipBackend)):
        raise BackendError(f"backend {kind!r} ({target}) is not a pnndeploy.backends.base.ChipBackend subclass")
    return cls


def backend_kinds() -> dict[str, str]:
    """Every backend kind this installation knows, with where its class lives (built-ins win a clash)."""
    kinds = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return {**kinds, **BUILT_IN}


def backend_class(kind: str) -> type[ChipBackend]:
    """The class of backend ``kind``; one clear line when no installed package provides it."""
    kinds = backend_kinds()
    if kind not in kinds:
        raise BackendError(f"no backend of kind {kind!r} is installed (known: {', '.join(sorted(kinds))}); "
                           f"install the package of your station's driver, which registers it under the "
                           f"{ENTRY_POINT_GROUP!r} entry point")
    return _load(kinds[kind], kind)


def open_backend(kind: str, address: str, options: Mapping[str, Any] | None = None,
                 timeout: float = 10.0, trust: Trust | None = None) -> ChipBackend:
    """An opened backend of ``kind`` at ``address`` (its ``open()`` has answered); ``trust``: where the profile's
    named files live and whether the user allowed plain HTTP off loopback (default: neither)."""
    backend = backend_class(kind)(address, options, timeout)
    backend.trust = trust or Trust()
    try:
        backend.open()
    except BaseException:
        backend.close()
        raise
    return backend


__all__ = ["BackendError", "ChipBackend", "ChipInfo", "LayerProgram", "Trust", "check_chip", "ENTRY_POINT_GROUP",
           "backend_kinds", "backend_class", "open_backend"]
