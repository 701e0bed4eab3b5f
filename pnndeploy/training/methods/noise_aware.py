"""Noise-aware training: Gaussian noise on every control at each training forward (the paper's second baseline)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from pnndeploy.platforms import get_platform
from pnndeploy.training.methods.base import Method, MethodVariant, control_noise_setting
from pnndeploy.training.methods.sat import SATSettings

if TYPE_CHECKING:
    from pnndeploy.training.config import TrainConfig


@dataclass(frozen=True)
class NoiseAwareSettings:
    noise: float | None = control_noise_setting()


class NoiseAware(Method):
    """Training on the controls with noise of the platform's default std (or ``--noise``)."""

    name = "noise-aware"
    summary = "Gaussian noise on the controls"
    settings = NoiseAwareSettings
    #: Round 1's model files record SAT's settings (at their defaults) for every method: kept byte for byte.
    recorded: ClassVar[type | None] = SATSettings
    baseline = True

    def control_noise(self, config: "TrainConfig") -> float:
        return config.noise if config.noise is not None else get_platform(config.platform).default_noise

    def variants(self, platform: str) -> tuple[MethodVariant, ...]:
        p = get_platform(platform)
        return (MethodVariant(self.name, {"method": self.name},
                              f"Gaussian noise ({p.default_noise:g} {p.control_units}) on every {p.control_noun} "
                              "while training"),)
