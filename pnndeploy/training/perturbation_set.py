"""The perturbations a deployed fleet will see, read off its process spec: what spec-SAT trains against.

A chip of the fleet realises, for every control device i,
``control_i = setting_i + (offset error)_i + k_i * dT + (ageing walk)_i + (DAC rounding)_i``.
Split by structure:

* **common mode**: ``k * dT`` with the mean drift coefficient k of the process,
  the same for every device of a chip, over the deployment range
  ``dT in [-T, +T]``.  Structured: the adversary takes its worst value;
* **independent**, per device, zero mean: the calibration error of the
  measured offset (sigma_cal), the ageing walk after the required days
  (rate * sqrt(days)), the device-to-device spread of k at the range's end
  (k * rel_sigma * T) and the DAC's rounding (step / sqrt(12)).  Their sum is
  Gaussian-like with ``sigma = sqrt(sigma_cal^2 + sigma_age^2 + sigma_k^2 +
  sigma_dac^2)``.

Why the ascent radius follows from sigma: to first order a random error xi
changes the loss by ``g . xi``, whose spread over chips is ``sigma * ||g||``;
the chip at the z-sigma quantile loses ``z * sigma * ||g||``, which is exactly
what SAM's ascent ``rho * g / ||g||`` adds when ``rho = z * sigma``.  The
expectation over xi (the second-order, average-curvature part) is what the
noise draws cover.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from pnndeploy.errors import ConfigError
from pnndeploy.formats.process_spec import load_process, process_keys, process_platform
from pnndeploy.formats.profile_folder import PROFILES_ENV, profiles_dir
from pnndeploy.platforms import get_platform

#: Default quantile of the independent errors the ascent guards (2 sigma: the 97.7th-percentile chip).
DEFAULT_Z = 2.0


@dataclass(frozen=True)
class PerturbationSet:
    """The fleet's perturbations of the controls, in control units, and the spec-SAT radius they imply."""

    platform: str
    source: str                 # the process spec they were read from
    temperature_K: float        # deployment range of the common-mode shift: dT in [-T, +T]
    days: float                 # days since calibration the model must last
    drift: float                # mean drift coefficient k, control units per K
    drift_rel_sigma: float      # device-to-device spread of k, relative
    calibration_sigma: float    # std of the measured offset's error, control units
    ageing_rate: float          # random-walk rate, control units per sqrt(day)
    dac_step: float             # one DAC code, control units
    z: float = DEFAULT_Z        # quantile of the independent errors the ascent guards
    #: The deployment re-fits a common bias per chip: the common mode is cancelled, its spread remains.
    compensated: bool = False
    #: Fractions of the devices the spec draws dead (at rest: setting 0) and stuck (at a drive uniform over the
    #: heater range): each step, as many controls rest where such a device would (:mod:`pnndeploy.platforms.faults`).
    dead_fraction: float = 0.0
    stuck_fraction: float = 0.0
    #: Where a faulty device rests beyond its drive: its fabrication offset, N(0, offset_sigma) (control units).
    offset_sigma: float = 0.0
    #: The heater range a stuck drive is drawn from (control units).
    heater_range: tuple[float, float] = (0.0, 0.0)

    @property
    def fault_rate(self) -> float:
        """Fraction of the devices that do not respond (dead or stuck)."""
        return self.dead_fraction + self.stuck_fraction

    @property
    def common_shift(self) -> float:
        """Largest common-mode shift of every control, k * T (control units); 0 when compensated."""
        return 0.0 if self.compensated else self.drift * self.temperature_K

    @property
    def common_temperatures(self) -> tuple[float, ...]:
        """The temperatures (K) the max over the common mode looks at: the range's ends and middle."""
        if self.compensated or self.temperature_K == 0:
            return (0.0,)
        return (-self.temperature_K, 0.0, self.temperature_K)

    @property
    def components(self) -> dict[str, float]:
        """The independent error's parts, each a std in control units."""
        return {
            "calibration": self.calibration_sigma,
            "ageing": self.ageing_rate * math.sqrt(self.days),
            "drift_spread": self.drift * self.drift_rel_sigma * self.temperature_K,
            "dac": self.dac_step / math.sqrt(12.0),
        }

    @property
    def sigma(self) -> float:
        """Std of the independent per-device error (control units): the noise spec-SAT trains with."""
        return math.sqrt(sum(v * v for v in self.components.values()))

    @property
    def rho(self) -> float:
        """The ascent radius, z * sigma (control units)."""
        return self.z * self.sigma

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "heater_range": list(self.heater_range), "fault_rate": self.fault_rate,
                "common_shift": self.common_shift,
                "common_temperatures_K": list(self.common_temperatures), "components": self.components,
                "sigma": self.sigma, "rho": self.rho}


#: Copies of the default fleets' process specs that ship inside the package (``PLATFORM.yaml``).
PACKAGED_PROCESSES = Path(__file__).resolve().parents[1] / "platforms" / "processes"


def default_process_path(platform: str) -> Path:
    """The process spec of the fleet the model will meet: ``process.yaml`` of the profiles folder
    ($PNNDEPLOY_PROFILES, else ``device_profiles[/PLATFORM]``); outside a checkout with the default folder, the copy
    shipped in the package (the same file, a test checks).  A folder named by $PNNDEPLOY_PROFILES must hold its
    own spec: falling back to the default fleet's would train against another fleet."""
    folder = profiles_dir(None, platform)
    local = folder / "process.yaml"
    if local.is_file() or os.environ.get(PROFILES_ENV):
        return local
    return PACKAGED_PROCESSES / f"{platform}.yaml"


def perturbation_set(platform: str, process_path: str | Path | None = None, temperature_K: float = 1.0,
                     days: float = 30.0, z: float = DEFAULT_Z, compensated: bool = False,
                 options: Mapping[str, Any] | None = None) -> PerturbationSet:
    """Read the perturbation set of a fleet from its process spec (default: the platform's default fleet's); a spec
    whose chips have other platform ``options`` than the model's is refused (it describes other chips)."""
    for name, value in (("--require-temperature", temperature_K), ("--require-days", days), ("--robust-z", z)):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number, 0 or more (got {value})")
    p = get_platform(platform)
    path = Path(process_path) if process_path is not None else default_process_path(platform)
    if process_path is None and not path.is_file():
        raise ConfigError(f"spec-sat reads its perturbations from a process spec and {path} (the profiles "
                          "folder's) does not exist; pass --robust-to PROCESS.yaml (the spec of the fleet you will "
                          "deploy on)")
    process = load_process(path, "--robust-to")
    if process["platform"] != platform:
        raise ConfigError(f"process file {path} describes {process['platform']} chips but the model is for "
                          f"{platform}; pass --robust-to with a {platform} process spec")
    chips = process_platform(process).option_values()
    for key, value in (options or {}).items():
        if chips.get(key) != value:
            raise ConfigError(f"process file {path} describes chips with {key}={chips.get(key)} but the model is for "
                              f"{key}={value}; pass --robust-to with the spec of the chips you will deploy on, or "
                              f"--platform-option {key}={chips.get(key)}")
    keys = process_keys(p)
    devices: Mapping[str, Any] = process[p.device_section]
    drift_key = f"drift_{p.control_units}_per_K"
    if drift_key not in devices or "drift_rel_sigma" not in devices:
        raise ConfigError(f"process file {path}: section '{p.device_section}' needs '{drift_key}' and "
                          "'drift_rel_sigma' for spec-sat's thermal drift; add them")
    env = process["environment"]
    lo, hi = env[keys["heater_range"]]
    drift = float(devices[drift_key])
    if not compensated and abs(drift) * temperature_K > (float(hi) - float(lo)) / 4:
        raise ConfigError(f"--require-temperature {temperature_K:g} K shifts every {p.control_noun} by "
                          f"{abs(drift) * temperature_K:g} {p.control_units}, more than a quarter of the heater "
                          f"range [{lo:g}, {hi:g}] of {path}: no setting survives that as programmed; require less, "
                          "or train for a drift-compensated deployment (--drift-compensation)")
    faults = process.get("faults", {})
    return PerturbationSet(
        dead_fraction=float(faults.get("dead_fraction", 0.0)), stuck_fraction=float(faults.get("stuck_fraction", 0.0)),
        offset_sigma=float(devices.get(keys["offset_sigma"], 0.0)), heater_range=(float(lo), float(hi)),
        platform=platform, source=str(path), temperature_K=float(temperature_K), days=float(days),
        drift=drift, drift_rel_sigma=float(devices["drift_rel_sigma"]),
        calibration_sigma=float(process["calibration"][keys["offset_sigma"]]),
        ageing_rate=float(env[keys["ageing"]]),
        dac_step=(float(hi) - float(lo)) / (2 ** int(env["dac_bits"]) - 1), z=float(z), compensated=compensated)
