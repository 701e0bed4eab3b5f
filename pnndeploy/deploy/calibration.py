"""Calibration by measurement: sweep every device through its backend, fit its transfer function, write a new calibration.

For each device the station sweeps its control alone (every other device at 0,
so no crosstalk) over a grid of DAC codes, and the platform fits its transfer
function to the measured weights (for rings: resonance offset, gamma, a;
:meth:`~pnndeploy.platforms.base.Platform.fit_response`).  The new calibration
replaces the profile's, with the time of the measurement and the station's
temperature; the old one is kept in ``calibration_history``.  The file is
written atomically, and not at all when any device fits badly
(``max_residual``) or the sweep failed half-way.  For a simulated profile the
result is also compared with the fabrication truth, which the fit never sees.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import numpy as np

from pnndeploy.backends import ChipBackend
from pnndeploy.compute import CPU, Compute
from pnndeploy.errors import PnnError
from pnndeploy.formats.profiles import CalibrationRecord, DeviceProfile
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.faults import faulty_flags, resting_truth

#: Sweep points per device unless asked otherwise (spaced on the DAC grid over the heater range).
DEFAULT_POINTS = 1024
#: Fewest and most sweep points per device a fit takes (`calibrate --points`, a lab's sweep file).
MIN_POINTS, MAX_POINTS = 16, 65536
#: A device whose rms fit residual exceeds this (weight units) is a failed fit: nothing is written.
DEFAULT_MAX_RESIDUAL = 0.02
#: More than this fraction of devices not responding is a failed measurement, not a chip: nothing is written.
DEFAULT_MAX_FAULTY = 0.1


@dataclass
class CalibrationResult:
    """A fitted calibration of one chip and how good it is."""

    device_id: str
    fields: dict[str, np.ndarray]          # each of the platform's field shape
    residual: np.ndarray                   # rms fit residual per device, weight units
    controls: np.ndarray                   # the sweep, control units
    temperature_C: float
    temperature_source: str                # "station" or "profile (the station reports none)"
    measured_at: str
    #: Simulated chips: per field, rms and max |calibration - truth| of the new and the old calibration.
    error_vs_truth: dict[str, dict[str, float]] | None = None
    #: Where the calibration came from (recorded in the profile beside measured_at).
    source: str = ""


def sweep_controls(profile: DeviceProfile, points: int = DEFAULT_POINTS) -> np.ndarray:
    """About ``points`` controls on the chip's DAC grid, evenly over its heater range."""
    if not MIN_POINTS <= points <= MAX_POINTS:
        raise PnnError(f"--points {points}: a transfer-function fit needs {MIN_POINTS} to {MAX_POINTS} sweep points")
    lo, hi = profile.environment.heater_range
    codes = 2 ** profile.environment.dac_bits
    stride = max(1, int(math.floor((codes - 1) / (points - 1))))
    return lo + np.arange(0, codes, stride) * (hi - lo) / (codes - 1)


def measure_calibration(profile: DeviceProfile, backend: ChipBackend, points: int = DEFAULT_POINTS,
                        progress: Callable[[int], None] | None = None, compute: Compute = CPU) -> CalibrationResult:
    """Sweep every device of ``profile``'s chip through ``backend`` and fit its transfer function (on ``compute``)."""
    platform = get_platform(profile.platform)
    if not platform.sweep_calibration:
        raise PnnError(f"calibration by measurement is not implemented for {profile.platform} chips (their "
                       f"devices cannot be swept one at a time here); calibrate {profile.device_id} with the "
                       "station's own procedure and write the profile")
    info = backend.info()
    if "measure_transfer" not in info.supports:
        raise PnnError(f"the station of {profile.device_id} cannot sweep single devices (its backend does not "
                       "support measure_transfer)")
    controls = sweep_controls(profile, points)
    rows, cols = (g.ravel() for g in np.indices(profile.shape))
    per_request = max(1, info.max_sweep_values // len(controls))
    measured = np.empty((len(rows), len(controls)))
    for start in range(0, len(rows), per_request):
        part = slice(start, min(start + per_request, len(rows)))
        measured[part] = backend.measure_transfer(rows[part], cols[part], controls)
        if progress is not None:
            progress(part.stop - part.start)
    if not np.all(np.isfinite(measured)):
        bad = int((~np.isfinite(measured).all(axis=1)).sum())
        raise PnnError(f"{profile.device_id}: the sweep of {bad} device(s) returned NaN or inf; check the "
                       "station's detectors and sweep again (nothing was written)")
    fields, residual = fit_sweep(profile, controls, measured, compute)
    temperature, source = info.temperature_C, "station"
    if temperature is None:
        temperature, source = profile.calibration_temperature_C, "profile (the station reports none)"
    result = CalibrationResult(profile.device_id, fields, residual, controls,
                               float(temperature), source, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               source=f"pnndeploy calibrate: a {len(controls)}-point sweep of every device")
    result.error_vs_truth = error_vs_truth(profile, fields)
    return result


def fit_sweep(profile: DeviceProfile, controls: np.ndarray, measured: np.ndarray,
              compute: Compute = CPU) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Fit every device's sweep, (devices, points) in row-major device order, on ``compute``: the one fit that
    `calibrate` and `profile import` share, so a lab's own sweep file is fitted exactly as a measured one.

    Returns the calibration fields and the rms residual per device, each of the chip's array shape.
    """
    platform = get_platform(profile.platform)
    with compute.running():
        fitted, residual = platform.fit_response(controls, measured, device=compute.torch_device())
    return {k: v.reshape(profile.shape) for k, v in fitted.items()}, residual.reshape(profile.shape)


def error_vs_truth(profile: DeviceProfile, fields: dict[str, np.ndarray]) -> dict[str, dict[str, float]] | None:
    """Simulated chips: per field, rms and max |calibration - truth| of the new and the old calibration."""
    if profile.fabrication is None:
        return None
    found, actual = _faulty(fields), _faulty(profile.fabrication)
    works = ~found & ~actual & ~_faulty(profile.calibration)
    if not works.any():
        return None
    # what a sweep can measure: a stuck neighbour's heat is part of a device's offset then
    truth = resting_truth(get_platform(profile.platform), profile.fabrication, profile.environment.crosstalk,
                          profile.shape)
    out: dict[str, dict[str, float]] = {
        k: {"rms": _rms((fields[k] - truth[k])[works]),
            "max_abs": float(np.abs(fields[k] - truth[k])[works].max()),
            "previous_rms": _rms((profile.calibration[k] - truth[k])[works])}
        for k in fields if k != "faulty"}
    if found.any() or actual.any():
        out["faulty"] = {"found": int(found.sum()), "truth": int(actual.sum()),
                         "missed": int((actual & ~found).sum()), "false_alarms": int((found & ~actual).sum())}
    return out


def _faulty(fields: dict[str, np.ndarray]) -> np.ndarray:
    """The devices ``fields`` (a calibration, a fit, a truth) flag as faulty, as a mask of the devices' shape
    even when it flags none (:func:`faulty_flags`)."""
    offset = next(v for k, v in fields.items() if k not in ("faulty", "stuck_setting"))
    return faulty_flags(fields, np.shape(offset))


def _rms(values: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(values))))


def check_fit(result: CalibrationResult, max_residual: float = DEFAULT_MAX_RESIDUAL,
              max_faulty: float = DEFAULT_MAX_FAULTY) -> None:
    """Refuse a calibration in which some device fits worse than ``max_residual``, or more than ``max_faulty`` of
    the devices do not respond (a laser off or a station wired to the wrong chip, not a chip that bad)."""
    faulty = _faulty(result.fields)
    if faulty.mean() > max_faulty:
        raise PnnError(f"{result.device_id}: {int(faulty.sum())} of {faulty.size} devices ({faulty.mean():.0%}) do "
                       f"not respond to their setting, more than --max-faulty {max_faulty:g}; is the laser on and "
                       "the station connected to this chip? nothing was written; check the station, or raise "
                       "--max-faulty")
    bad = np.argwhere(~(result.residual <= max_residual))
    if bad.size:
        r, c = (int(v) for v in bad[0])
        why = ("no resonance inside the sweep, or too shallow to be a ring" if not np.isfinite(result.residual[r, c])
               else f"rms residual {result.residual[r, c]:.4f} > --max-residual {max_residual}")
        raise PnnError(f"{result.device_id}: {len(bad)} device(s) fit badly (device ({r}, {c}): {why}); a dead or "
                       "drifting device? nothing was written; check the station, or raise --max-residual")


def recalibrated(profile: DeviceProfile, result: CalibrationResult) -> DeviceProfile:
    """``profile`` with ``result`` as its calibration and the replaced one appended to its history."""
    old = CalibrationRecord({k: np.asarray(v) for k, v in profile.calibration.items()},
                            profile.calibration_measured_at, profile.calibration_temperature_C, result.measured_at,
                            profile.calibration_source)
    return dataclasses.replace(profile, calibration=dict(result.fields), calibration_measured_at=result.measured_at,
                               calibration_temperature_C=result.temperature_C, calibration_source=result.source,
                               calibration_history=[*profile.calibration_history, old])


def calibration_doc(result: CalibrationResult, units: dict[str, str], written: str | None) -> dict:
    """The `calibrate --json` document."""
    return {
        "device": result.device_id,
        "measured_at": result.measured_at,
        "temperature_C": result.temperature_C,
        "temperature_source": result.temperature_source,
        "sweep": {"points": int(len(result.controls)), "from": float(result.controls[0]),
                  "to": float(result.controls[-1]), "units": units.get("_controls", "")},
        "fields": {k: {"mean": float(v.mean()), "std": float(v.std()), "units": units.get(k, "")}
                   for k, v in result.fields.items() if k != "faulty"},
        "faulty": faulty_doc(result.fields),
        "residual": {"rms_mean": float(result.residual.mean()), "rms_max": float(result.residual.max()),  # finite: checked
                     "worst_device": [int(v) for v in np.unravel_index(np.argmax(result.residual),
                                                                       result.residual.shape)],
                     "units": "1"},
        "error_vs_truth": result.error_vs_truth,
        "written": written,
    }


#: Faulty devices a report lists by position (the count is always given).
LISTED_FAULTY = 20


def faulty_doc(fields: dict[str, np.ndarray]) -> dict:
    """How many devices do not respond, and where the first :data:`LISTED_FAULTY` are (row, col)."""
    faulty = _faulty(fields)
    where = np.argwhere(faulty)[:LISTED_FAULTY]
    return {"count": int(faulty.sum()), "fraction": float(faulty.mean()) if faulty.size else 0.0,
            "devices": [[int(v) for v in row] for row in where]}
