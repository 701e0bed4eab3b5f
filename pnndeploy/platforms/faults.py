"""Faulty devices: heaters (phase shifters) that do not respond to their setting.

Real chips have them: a heater whose wire bond is open gives no heat (**dead**), one whose driver channel is
shorted or latched holds one drive whatever is programmed (**stuck**).  Either way the device behaves as if it
were set to a fixed value, its *stuck setting* (0 for a dead heater), and everything else about it (its
fabrication offset, its thermal drift, its neighbours' crosstalk) still acts.  That one rule is the whole
physics, the same on every platform whose settings drive devices one to one: a faulty device's channel applies
nothing (:func:`realised_settings`), and its stuck drive, with the heat it spills into its neighbours, is part of
the chip's offsets (:func:`resting_truth`); the platform's physics takes it from there.

Where the fields live (``profiles``):

* the **fabrication truth** of a simulated chip holds ``faulty`` (per device: 0 works, 1 dead, 2 stuck) and
  ``stuck_setting`` (control units);
* the **calibration** holds ``faulty`` (per device: 0 works, 1 does not respond; a sweep cannot tell a dead
  heater from a stuck one, nor should the mapper care); the calibrated offset of a faulty device is the control
  it realises with its setting ignored (its stuck drive included), so the calibrated model of the chip stays
  ``control = setting + offset + ...`` with the setting of a faulty device taken as 0.

A process spec draws them per chip with its optional ``faults`` section (:func:`draw_faults`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

#: Fault codes of the fabrication truth (the calibration records 0 or 1).
WORKS, DEAD, STUCK = 0, 1, 2
#: The keys of a process spec's ``faults`` section: fractions of the devices.
FAULT_KEYS = ("dead_fraction", "stuck_fraction")
#: At most this fraction of a chip's devices may be drawn faulty (a chip beyond it is scrap, not a test case).
MAX_FAULT_FRACTION = 0.5


def draw_faults(spec: Mapping[str, Any], device_shape: tuple[int, ...], heater_range: tuple[float, float],
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The faulty devices of one chip: each device independently dead with ``dead_fraction``, else stuck with
    ``stuck_fraction`` at a drive uniform over the heater range.  Returns the fabrication fields ``faulty`` (uint8
    codes) and ``stuck_setting`` (control units, 0 where the device works or is dead)."""
    u = rng.random(device_shape)
    drive = rng.uniform(heater_range[0], heater_range[1], device_shape)
    dead = float(spec.get("dead_fraction", 0.0))
    stuck = float(spec.get("stuck_fraction", 0.0))
    codes = np.where(u < dead, DEAD, np.where(u < dead + stuck, STUCK, WORKS)).astype(np.uint8)
    return {"faulty": codes, "stuck_setting": np.where(codes == STUCK, drive, 0.0)}


def faulty_mask(fields: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The devices of a calibration or fabrication that do not respond (bool, per device); None when it records
    none (older profiles, fault-free chips)."""
    if not fields or "faulty" not in fields:
        return None
    mask = np.asarray(fields["faulty"]) != WORKS
    return mask if mask.any() else None


def faulty_flags(fields: Mapping[str, np.ndarray] | None, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`faulty_mask` as a mask of the devices' ``shape`` even where nothing is flagged (all False)."""
    mask = faulty_mask(fields)
    return np.zeros(shape, dtype=bool) if mask is None else mask.reshape(shape)


def realised_settings(platform: Any, settings: np.ndarray, fabrication: Mapping[str, np.ndarray] | None,
                      layout: tuple[int, int]) -> np.ndarray:
    """What a chip's programmable channels really apply when ``settings`` (one layer's, the platform's control
    shape) are programmed: 0 on a faulty device, whose stuck drive (if any) :func:`resting_truth` folds into the
    offsets instead.  Without faults, ``settings`` itself."""
    mask = faulty_mask(fabrication)
    if mask is None:
        return settings
    settings = np.asarray(settings)
    return np.where(platform.per_setting(mask, settings.shape, layout), 0.0, settings)


def stuck_drives(fabrication: Mapping[str, np.ndarray]) -> np.ndarray:
    """Each device's stuck drive (control units): its ``stuck_setting`` where it is stuck, 0 elsewhere."""
    return np.where(np.asarray(fabrication["faulty"]) == STUCK, np.asarray(fabrication["stuck_setting"], np.float64),
                    0.0)


def resting_truth(platform: Any, fabrication: Mapping[str, np.ndarray], crosstalk: float,
                  layout: tuple[int, int]) -> Mapping[str, np.ndarray]:
    """The truth with its faulty devices folded into the offsets, as the chip behaves whatever is programmed: a
    stuck device's offset holds its drive, and its neighbours' offsets the heat that drive spills into them (a
    stuck heater stays on in every tile of every layer, and through a sweep of its neighbour).  With this truth
    and :func:`realised_settings` (0 on faulty devices), a platform's physics needs nothing else.  Without
    faults, the truth itself."""
    if faulty_mask(fabrication) is None:
        return fabrication
    stuck = stuck_drives(fabrication)
    offset = np.asarray(fabrication[platform.offset_name], np.float64) + stuck
    if crosstalk:
        offset = offset + crosstalk * platform.device_spill(stuck, layout)
    return {**fabrication, platform.offset_name: offset}


def resting_profile(platform: Any, profile: Any) -> Any:
    """A simulated chip's profile (a dataclass with ``fabrication``, ``environment`` and ``shape``) with its truth
    at rest (:func:`resting_truth`): what the simulators hand the platform's physics.  Unchanged without faults."""
    if profile.fabrication is None or faulty_mask(profile.fabrication) is None:
        return profile
    truth = resting_truth(platform, profile.fabrication, float(profile.environment.crosstalk), tuple(profile.shape))
    return dataclasses.replace(profile, fabrication=truth)


def calibrated_faults(fabrication: Mapping[str, np.ndarray]) -> np.ndarray:
    """The calibration's ``faulty`` of a simulated chip whose lab found every faulty device (0 or 1 per device)."""
    return (np.asarray(fabrication["faulty"]) != WORKS).astype(np.uint8)
