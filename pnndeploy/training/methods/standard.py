"""The paper's baseline: train the weight matrix W in [-1, 1] directly, map it onto the controls at export."""

from __future__ import annotations

from typing import ClassVar

from pnndeploy.platforms import get_platform
from pnndeploy.training.methods.base import Method, MethodVariant
from pnndeploy.training.methods.sat import SATSettings


class Standard(Method):
    """Plain training of W (of the ideal device's controls where a layer is not a weight matrix)."""

    name = "standard"
    summary = "the paper's baseline, trains W in [-1, 1] directly and maps it at export"
    #: Round 1's model files record SAT's settings (at their defaults) for every method: kept byte for byte.
    recorded: ClassVar[type | None] = SATSettings
    baseline = True
    trains_weights = True

    def variants(self, platform: str) -> tuple[MethodVariant, ...]:
        noun = get_platform(platform).control_noun
        return (MethodVariant(self.name, {"method": self.name},
                              f"the paper's baseline: trains W, maps it onto the {noun}s at export"),)
