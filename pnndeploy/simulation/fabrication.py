"""Simulated fabrication: draw chips from a process spec (process.yaml) and write their profiles.

Every chip has its own random stream, derived from the fleet seed and the
chip's name (never the global RNG), so chipC is the same whether it is
generated alone or in a fleet of 100, and a regenerated fleet is identical to
the shipped one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pnndeploy.errors import ConfigError
from pnndeploy.formats.process_spec import check_process, process_keys, process_platform
from pnndeploy.formats.profile_folder import check_device_name
from pnndeploy.formats.profile_schema import param_ranges
from pnndeploy.formats.profiles import DeviceProfile, Environment, write_profile
from pnndeploy.platforms.faults import calibrated_faults, draw_faults, resting_truth
from pnndeploy.simulation.streams import device_rng

# --------------------------------------------------------------------------- names and streams


def chip_names(count: int, prefix: str = "chip") -> list[str]:
    """``count`` names: chipA..chipZ, chipAA, chipAB, ... (spreadsheet-column letters)."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ConfigError(f"chip count must be a non-negative integer, got {count!r}")
    names = []
    for i in range(1, count + 1):
        letters = ""
        n = i
        while n > 0:
            n, r = divmod(n - 1, 26)
            letters = chr(ord("A") + r) + letters
        names.append(f"{prefix}{letters}")
    return names


def chip_rng(seed: int, device_id: str) -> np.random.Generator:
    """The fabrication stream of one chip: a function of the fleet seed and the chip's name only."""
    return device_rng(device_id, seed)


# --------------------------------------------------------------------------- chips


def generate_chip(process: Mapping[str, Any], device_id: str, seed: int,
                  created: str | None = None) -> DeviceProfile:
    """One simulated chip: fabrication truth drawn from the process, calibration = truth + error."""
    process = check_process(process)
    check_device_name(device_id)
    platform = process_platform(process)
    shape = (int(process["array"]["rows"]), int(process["array"]["cols"]))
    cal_spec = process["calibration"]
    env_spec = process["environment"]
    names = process_keys(platform)
    rng = chip_rng(seed, device_id)

    truth = dict(platform.sample_fabrication(process[platform.device_section], shape, rng))
    drift = np.asarray(truth.pop("drift_coefficient"), dtype=np.float64)
    fields = [platform.offset_name, *platform.param_units]
    fabrication = {k: np.asarray(truth[k], dtype=np.float64) for k in fields}

    # the lab's measurement: same stream, after the truth, fixed order (offset, then params)
    offset = fabrication[platform.offset_name]
    calibration = {platform.offset_name:
                   offset + float(cal_spec[names["offset_sigma"]]) * rng.standard_normal(offset.shape)}
    ranges = param_ranges(platform)
    for k in platform.param_units:
        rel = float(cal_spec["param_rel_sigma"][k])
        measured = fabrication[k] * (1.0 + rel * rng.standard_normal(fabrication[k].shape))
        # a fit is constrained to physical values (e.g. extinction a <= 1)
        calibration[k] = ranges[k].clip(measured)

    hr = env_spec[names["heater_range"]]
    if "faults" in process:
        _add_faults(platform, process["faults"], device_id, seed, shape, (float(hr[0]), float(hr[1])),
                    float(env_spec["crosstalk"]), fabrication, calibration)
    environment = Environment(
        drift_coefficient=drift,
        crosstalk=float(env_spec["crosstalk"]),
        detector_noise=float(env_spec["detector_noise"]),
        dac_bits=int(env_spec["dac_bits"]),
        heater_range=(float(hr[0]), float(hr[1])),
        ageing_rate=float(env_spec[names["ageing"]]),
    )
    return DeviceProfile(
        device_id=device_id,
        platform=platform.name,
        process=str(process["name"]),
        created=created if created is not None else str(cal_spec["measured_at"]),
        shape=shape,
        calibration=calibration,
        calibration_measured_at=str(cal_spec["measured_at"]),
        calibration_temperature_C=float(cal_spec["temperature_C"]),
        environment=environment,
        fabrication=fabrication,
        options=platform.option_values(),
    )


#: The ``extra`` of a chip's fault stream: apart from its fabrication stream, so a spec that adds faults leaves
#: every other drawn number of its chips as it was.
FAULT_STREAM = 1


def _add_faults(platform: Any, spec: Mapping[str, Any], device_id: str, seed: int, shape: tuple[int, int],
                heater_range: tuple[float, float], crosstalk: float, fabrication: dict[str, np.ndarray],
                calibration: dict[str, np.ndarray]) -> None:
    """Draw the chip's faulty devices into its truth, and into its calibration as a lab that found them all
    records them: flagged, the calibrated offset holding the stuck drive (what the device realises at rest), and
    its neighbours' offsets the heat a stuck drive spills into them (a sweep of a neighbour measures it, since the
    stuck heater stays on)."""
    drawn = draw_faults(spec, platform.device_shape(shape), heater_range, device_rng(device_id, seed, FAULT_STREAM))
    fabrication.update(drawn)
    calibration["faulty"] = calibrated_faults(drawn)
    rest = resting_truth(platform, fabrication, crosstalk, shape)
    calibration[platform.offset_name] = (calibration[platform.offset_name] + rest[platform.offset_name]
                                         - fabrication[platform.offset_name])


def make_fleet(process: Mapping[str, Any], count: int, prefix: str, seed: int,
               out_dir: str | os.PathLike[str],
               progress: Callable[[int, int, str], Any] | None = None) -> list[Path]:
    """Write ``<out_dir>/<name>.h5`` for ``count`` chips (atomically); return the paths.

    ``progress(i, n, name)`` is called after each chip is written, ``i`` counting from 1.
    """
    process = check_process(process)
    names = chip_names(count, prefix)
    for name in names[:1] + names[-1:]:
        check_device_name(name)
    out_dir = Path(out_dir)
    paths = []
    for i, name in enumerate(names, start=1):
        path = out_dir / f"{name}.h5"
        write_profile(generate_chip(process, name, seed), path)
        paths.append(path)
        if progress is not None:
            progress(i, len(names), name)
    return paths


__all__ = ["chip_names", "chip_rng", "generate_chip", "make_fleet"]
