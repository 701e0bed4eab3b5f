"""Weight-device platforms behind one interface; look one up by name."""

from __future__ import annotations

from typing import Any, Mapping

from pnndeploy.errors import ModelFileError, PnnError
from pnndeploy.untrusted import brief
from pnndeploy.platforms.base import Platform
from pnndeploy.platforms.d2nn import D2NNPlatform
from pnndeploy.platforms.freespace import FreeSpacePlatform
from pnndeploy.platforms.mrr import MRRPlatform
from pnndeploy.platforms.mzi import MZIPlatform

PLATFORMS: dict[str, Platform] = {"mrr": MRRPlatform(), "mzi": MZIPlatform(), "freespace": FreeSpacePlatform(),
                                 "d2nn": D2NNPlatform()}
#: The platform of `pnndeploy train` and `fleet make` when none is named.
DEFAULT_PLATFORM = "mrr"


def get_platform(name: str) -> Platform:
    """The platform called ``name``; a clear error for an unknown one."""
    try:
        return PLATFORMS[name]
    except KeyError:
        known = ", ".join(sorted(PLATFORMS))
        raise PnnError(f"unknown platform {name!r}: this pnndeploy knows {known}") from None


def platform_for(name: str, params: Mapping[str, Any] | None = None) -> Platform:
    """The platform a model file describes: ``name`` with the options its ``platform_params`` record (a model written
    before the option existed gets its default); a bad value is the model file's error, in one line."""
    platform = get_platform(name)
    if not platform.options or not isinstance(params, Mapping):
        return platform
    values = platform.recorded_options(params)
    for option in platform.options:         # a file's values as they are: "16" is not the integer 16
        problem = option.problem(values[option.name]) if option.name in values else None
        if problem is not None:
            raise ModelFileError(f"model metadata platform_params.{option.name} is {brief(values[option.name])}, "
                                 f"expected {problem}")
    return platform.configure(values, ModelFileError, "model metadata platform_params")


__all__ = ["Platform", "platform_for", "MRRPlatform", "MZIPlatform", "FreeSpacePlatform", "PLATFORMS", "DEFAULT_PLATFORM", "get_platform"]
