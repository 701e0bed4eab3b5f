"""Sharpness-aware training (SAT) on the physical controls, with a hand-set radius (the paper's method).

The step is :class:`~pnndeploy.training.sat.SharpnessAwareStep` (imported when training starts: torch); on a
platform with setup axes it cannot differentiate, FD-SAT trains against the audit's box as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pnndeploy.errors import ConfigError
from pnndeploy.platforms import PLATFORMS, get_platform
from pnndeploy.training.methods.base import (Method, MethodVariant, Step, ascent_setting, check_ascent,
                                             control_noise_setting, per_platform, sat_every_setting)
from pnndeploy.training.settings import setting

if TYPE_CHECKING:
    from pnndeploy.training.config import TrainConfig

OWNER = "SAT's ascent step"


@dataclass(frozen=True)
class SATSettings:
    rho: float = setting(
        0.1, minimum=0.0, owner=OWNER,
        help="SAT radius: the norm of the perturbation of all controls together, in control units "
             f"({', '.join(f'{p.control_units} for {n}' for n, p in sorted(PLATFORMS.items()))}; relative when "
             "--adaptive). --rho 0 takes the same steps as plain training on the controls (at twice the cost: both "
             "passes still run)")
    adaptive: bool = setting(False, owner=OWNER, help="Adaptive SAT (ASAM): scale the perturbation by |control|")
    noise: float | None = control_noise_setting()
    perturb: str = setting("onchip", choices=("onchip", "all"), owner=OWNER,
                           help="Which parameters SAT perturbs: the on-chip controls (onchip) or also gains and "
                                "biases (all)")
    drift_budget: float = setting(
        0.0, minimum=0.0, metavar="K", owner=OWNER,
        help="SAT only: in each ascent step also shift every control by the worse of ±k·K (a common-mode "
             f"temperature change of K kelvin; k = {per_platform(lambda p: p.nominal_drift)} per K); 0: off")
    sat_every: int = sat_every_setting()
    ascent: str = ascent_setting()


class SAT(Method):
    """The paper's SAT: ascend by rho along the gradient (or Adam's momentum), train at that point, restore."""

    name = "sat"
    summary = ("sharpness-aware training on the physical controls (ring detunings, mesh phases) with a hand-set "
               "--rho")
    settings = SATSettings
    trains_setup = True
    radius = "rho"

    def check(self, config: "TrainConfig") -> None:
        check_ascent(config)
        platform = PLATFORMS.get(config.platform)
        if config.adaptive and platform is not None and platform.periodic:
            noun = platform.control_noun
            raise ConfigError(f"--adaptive scales SAT's perturbation by |{noun}|, which means nothing for the "
                              f"periodic {noun}s of --platform {config.platform} (0 and 2 pi are the same {noun}); "
                              "drop --adaptive")

    def control_noise(self, config: "TrainConfig") -> float:
        return config.noise if config.noise is not None else 0.0

    @staticmethod
    def perturbed(model: Any, config: "TrainConfig") -> list[Any]:
        """The parameters SAT perturbs: the on-chip controls, or every parameter with ``perturb: all``."""
        params = model.onchip_parameters() if config.perturb == "onchip" else list(model.parameters())
        return [p for p in params if p.requires_grad]

    def start(self, model: Any, config: "TrainConfig", optimizer: Any, total_steps: int) -> Step:
        from pnndeploy.training import sat
        from pnndeploy.training.adversary import AdversarialStep

        model.set_control_noise(self.control_noise(config))
        params = self.perturbed(model, config)
        onchip = {id(p) for p in model.onchip_parameters()}
        drift = [model.platform.nominal_drift if id(p) in onchip else 0.0 for p in params]
        adversary = sat.SharpnessAwareStep(params, config.rho, config.adaptive, drift=drift,
                                           drift_budget=config.drift_budget, every=config.sat_every)
        return AdversarialStep(adversary, config.ascent, optimizer)

    def model_records(self, config: "TrainConfig", learnt: dict[str, Any]) -> dict[str, Any]:
        return {"rho": config.rho, **learnt}

    def variants(self, platform: str) -> tuple[MethodVariant, ...]:
        p = get_platform(platform)
        return (MethodVariant(self.name, {"method": self.name},
                              f"sharpness-aware training on the {p.control_noun}s (ρ = {SATSettings.rho:g} {p.control_units}, "
                              "hand-set)"),)
