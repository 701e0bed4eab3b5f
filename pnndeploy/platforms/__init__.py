"""Weight-device platforms behind one interface; look one up by name."""

from __future__ import annotations

from pnndeploy.errors import PnnError
from pnndeploy.platforms.base import Platform
from pnndeploy.platforms.freespace import FreeSpacePlatform
from pnndeploy.platforms.mrr import MRRPlatform
from pnndeploy.platforms.mzi import MZIPlatform

PLATFORMS: dict[str, Platform] = {"mrr": MRRPlatform(), "mzi": MZIPlatform(), "freespace": FreeSpacePlatform()}
#: The platform of `pnndeploy train` and `fleet make` when none is named.
DEFAULT_PLATFORM = "mrr"


def get_platform(name: str) -> Platform:
    """The platform called ``name``; a clear error for an unknown one."""
    try:
        return PLATFORMS[name]
    except KeyError:
        known = ", ".join(sorted(PLATFORMS))
        raise PnnError(f"unknown platform {name!r}: this pnndeploy knows {known}") from None


__all__ = ["Platform", "MRRPlatform", "MZIPlatform", "FreeSpacePlatform", "PLATFORMS", "DEFAULT_PLATFORM", "get_platform"]
