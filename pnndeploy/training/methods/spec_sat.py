"""spec-SAT: sharpness-aware training over the perturbations the fleet's process spec says a deployed chip will see.

Every error size is read off the process spec (``--robust-to``): the independent per-device errors' sigma, the
common-mode drift over ``--require-temperature`` (cancelled when the deployment compensates it), the ascent's
radius z sigma, and, on a platform with setup axes training cannot differentiate, FD-SAT's box: z sigma of the
setups' spread and calibration error along each axis.  The step is
:class:`~pnndeploy.training.spec_sat.SpecAdversary` (imported when training starts: torch).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pnndeploy.errors import ConfigError
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.axes import PerturbationAxis
from pnndeploy.simulation.compensation import COMPENSATIONS
from pnndeploy.training.methods.base import (Method, MethodVariant, Step, ascent_setting, check_ascent,
                                             sat_every_setting, setup_box)
from pnndeploy.training.methods.sat import SATSettings
from pnndeploy.training.settings import flag, setting

if TYPE_CHECKING:
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.perturbation_set import PerturbationSet

OWNER = "spec-SAT's perturbation set"


@dataclass(frozen=True)
class SpecSATSettings:
    sat_every: int = sat_every_setting()
    ascent: str = ascent_setting()
    robust_to: str | None = setting(
        None, metavar="PROCESS.yaml", owner=OWNER, path=True,
        help="spec-sat: the process spec of the fleet to deploy on; its calibration error, ageing rate, drift "
             "coefficient and spread, DAC step and (free space) setups' spread make the perturbation set",
        default_text="the platform's default fleet's, device_profiles[/PLATFORM]/process.yaml")
    require_temperature: float = setting(
        1.0, minimum=0.0, metavar="K", owner=OWNER,
        help="spec-sat: deployment range of the common-mode temperature change, ±K (as audit)")
    require_days: float = setting(
        30.0, minimum=0.0, metavar="D", owner=OWNER,
        help="spec-sat: days after calibration the model must last: the ageing walk's spread")
    robust_z: float = setting(
        2.0, minimum=0.0, metavar="Z", owner=OWNER,
        help="spec-sat: the ascent guards the Z-sigma quantile of the independent errors, rho = Z * sigma, and "
             "FD-SAT's setup box is Z sigma of the setups' spread (2: the 97.7th-percentile chip)")
    drift_compensation: bool | None = setting(
        None, owner=OWNER,
        help="spec-sat: round 2's spelling of --compensation bias (on) / none (off)",
        default_text="on, unless --compensation says otherwise")
    compensation: str | None = setting(
        None, choices=lambda: tuple(COMPENSATIONS), owner=OWNER, record_default=False,
        help="spec-sat: the drift compensation the deployment will run (audit --compensation; " + "; ".join(
            f"{c.name}: {c.summary}" for c in COMPENSATIONS.values()) + "). A strategy that cancels the "
        "common-mode shift leaves only its device-to-device spread in the perturbation set; none trains against "
        "the worst of -K, 0, +K. The model file records it, and audit judges with it",
        default_text="bias, or none with --no-drift-compensation")


class SpecSAT(Method):
    """SAT whose noise, drift, radius and setup box all come from the process spec of the fleet."""

    name = "spec-sat"
    summary = ("SAT over the perturbations of the fleet's process spec (noise of the spec's sigma, the worst "
               "common-mode drift, radius 2 sigma; see --robust-to)")
    settings = SpecSATSettings
    default_hidden = (128,)
    trains_setup = True
    radius = "robust_z"

    @staticmethod
    def strategy(config: "TrainConfig") -> str:
        """The drift compensation the deployment runs: ``compensation``, else bias or none by the older flag."""
        if config.compensation is not None:
            return config.compensation
        return "none" if config.drift_compensation is False else "bias"

    def check(self, config: "TrainConfig") -> None:
        check_ascent(config)
        if config.compensation is not None and config.drift_compensation is not None and \
                COMPENSATIONS[config.compensation].cancels_common_mode != config.drift_compensation:
            spelt = "--drift-compensation" if config.drift_compensation else "--no-drift-compensation"
            raise ConfigError(f"--compensation {config.compensation} and {spelt} contradict each other; give one "
                              "(--drift-compensation is --compensation bias, --no-drift-compensation is none)")

    def record(self, config: "TrainConfig", recorded: dict[str, Any]) -> dict[str, Any]:
        """One spelling per deployment, as round 2's files had it: ``drift_compensation`` true or false, and
        ``compensation`` only for a strategy that flag cannot say (gain-bias)."""
        strategy = self.strategy(config)
        recorded["drift_compensation"] = COMPENSATIONS[strategy].cancels_common_mode
        if strategy in ("bias", "none"):
            recorded.pop("compensation", None)
        else:
            recorded["compensation"] = strategy
        return recorded

    def refusal(self, name: str, config: "TrainConfig") -> str:
        if name in {f.name for f in fields(SATSettings)}:
            return (f"{flag(name)} is not a setting of spec-sat, which reads its perturbations (noise, drift, "
                    "radius) from the process spec; change --robust-to, --require-temperature, --require-days or "
                    "--robust-z, or use --method sat")
        return super().refusal(name, config)

    def perturbations(self, config: "TrainConfig") -> "PerturbationSet":
        """The perturbation set of the config's process spec, for the deployment's compensation."""
        from pnndeploy.training.perturbation_set import perturbation_set

        return perturbation_set(config.platform, config.robust_to, config.require_temperature, config.require_days,
                                config.robust_z, COMPENSATIONS[self.strategy(config)].cancels_common_mode,
                                options=config.chip_platform.option_values())

    def box_half_widths(self, axes: list[PerturbationAxis], config: "TrainConfig") -> list[float]:
        """z sigma of the setups' spread and calibration error along each axis, read off the process spec (the
        audit's requirement along an axis the spec does not describe)."""
        from pnndeploy.formats.process_spec import load_process
        from pnndeploy.training.perturbation_set import default_process_path

        path = Path(config.robust_to) if config.robust_to is not None else default_process_path(config.platform)
        process = load_process(path, "--robust-to")
        if process["platform"] != config.platform:
            raise ConfigError(f"process file {path} describes {process['platform']} chips but the model is for "
                              f"{config.platform}; pass --robust-to with a {config.platform} process spec")
        section = get_platform(config.platform).device_section
        widths = [axis.box_half_width(process, section, config.robust_z) for axis in axes]
        for axis, width in zip(axes, widths):
            if axis.compose == "multiply" and width is not None and width >= 0.5:
                raise ConfigError(f"--robust-z {config.robust_z:g} with {path}: a {axis.label} error of ±{width:.2g} "
                                  "is not a misalignment (50 % or more); lower --robust-z or give --robust-"
                                  f"{axis.flag or axis.name}")
        return [float(w) if w is not None else float(axis.require) for w, axis in zip(widths, axes)]

    def start(self, model: Any, config: "TrainConfig", optimizer: Any, total_steps: int) -> Step:
        from pnndeploy.training.spec_sat import SpecAdversary, SpecSATStep

        model.set_control_noise(0.0)
        adversary = SpecAdversary([p for p in model.onchip_parameters() if p.requires_grad],
                                  self.perturbations(config), every=config.sat_every)
        return SpecSATStep(adversary, config.ascent, optimizer, total_steps)

    def model_records(self, config: "TrainConfig", learnt: dict[str, Any]) -> dict[str, Any]:
        pset = learnt.get("perturbation_set") or self.perturbations(config)
        return {"rho": pset.rho, "perturbation_set": pset.to_dict()}

    def variants(self, platform: str) -> tuple[MethodVariant, ...]:
        return (
            MethodVariant("spec-sat-programmed", {"method": self.name, "drift_compensation": False},
                          "spec-SAT for chips run as programmed: noise of the process spec's σ, the worst of −1 K, "
                          "0 K, +1 K common-mode drift, ascent of radius 2σ"),
            MethodVariant("spec-sat", {"method": self.name},
                          "spec-SAT for a drift-compensated deployment (the default of `pnndeploy train`): the "
                          "common mode is cancelled by a per-chip bias re-fitted at run time, so the set is σ noise "
                          "plus the 2σ ascent; audited with the compensation"),
        )

    def for_fleet(self, process_path: Any) -> dict[str, Any]:
        return {"robust_to": str(process_path)} if Path(process_path).is_file() else {}

    def reads(self, config: "TrainConfig") -> list[Any]:
        """The process spec (read and checked against the platform, with the setup box it gives)."""
        source = Path(self.perturbations(config).source)
        setup_box(config)
        return [source]
