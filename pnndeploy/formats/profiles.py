"""Device profiles: one HDF5 file per chip (schema_version 1).

A profile holds what the lab knows about one chip:

* ``calibration``: the measured per-device offset and transfer-function
  parameters (what the mapper uses), with the time and temperature of the
  measurement;
* ``environment``: per-device drift coefficients and per-chip noise, crosstalk,
  DAC resolution, heater range and ageing rate;
* ``fabrication`` (simulated chips only): the truth the simulator evaluates on;
* ``backend`` (optional): how to reach the chip on its station (kind, address and
  options such as ``token_file``), :mod:`pnndeploy.backends`;
* ``calibration_history`` (optional): earlier calibrations, oldest first, each as it
  was before `pnndeploy calibrate` replaced it;
* ``options`` (optional): the chip's platform options, one attribute each (a diffractive setup's pixel pitch,
  wavelength and distances), which a model must have been trained for.

This module reads, writes and summarises profiles; what a valid file holds is
:mod:`pnndeploy.formats.profile_schema`, where profiles live is
:mod:`pnndeploy.formats.profile_folder`.  Files are plain HDF5 (datasets with
``units`` attributes), readable with h5dump/HDFView.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pnndeploy.atomic import atomic_path
from pnndeploy.errors import PnnError, ProfileError
from pnndeploy.formats.hdf5 import (HDF5_LIBVER, attr_float, attr_int, attr_str, h5_array_options, open_hdf5,
                                    parse_time)
from pnndeploy.formats.profile_schema import (
    REGENERATE_HINT,
    SCHEMA_VERSION,
    chip_options,
    environment_units,
    fault_units,
    field_units,
    validate_profile,
)
from pnndeploy.platforms import Platform, get_platform
from pnndeploy.platforms.faults import DEAD, STUCK, resting_truth

# --------------------------------------------------------------------------- data classes


@dataclass
class Environment:
    """Per-chip environment: drift, crosstalk, noise, DAC and ageing."""

    drift_coefficient: np.ndarray          # control units per kelvin, (rows, cols)
    crosstalk: float                       # fraction of a neighbour's heater setting
    detector_noise: float                  # std of additive weight noise
    dac_bits: int
    heater_range: tuple[float, float]      # control units
    ageing_rate: float                     # control units per sqrt(day)


@dataclass
class BackendSpec:
    """Where a chip is reached: a backend ``kind`` (:mod:`pnndeploy.backends`), its address and options."""

    kind: str
    address: str
    #: Text options for the backend (``device``: the chip id the station must report; ``token_file`` and
    #: ``ca_file``: names of files in the ``tokens/`` folder beside the profile, never paths).
    options: dict[str, str] = field(default_factory=dict)
    #: The folder of the profile file this was read from (not stored): its ``tokens/`` folder lies there.
    folder: Path | None = field(default=None, compare=False, repr=False)


@dataclass
class CalibrationRecord:
    """One earlier calibration, kept when a new one replaced it."""

    fields: dict[str, np.ndarray]
    measured_at: str
    temperature_C: float
    replaced_at: str
    #: Where it came from (`calibrate`'s sweep, an imported file and its sha256); "" when not recorded.
    source: str = ""


@dataclass
class DeviceProfile:
    """Everything known about one chip."""

    device_id: str
    platform: str
    process: str
    created: str
    shape: tuple[int, int]
    calibration: dict[str, np.ndarray]
    calibration_measured_at: str
    calibration_temperature_C: float
    environment: Environment
    fabrication: dict[str, np.ndarray] | None = None
    schema_version: int = field(default=SCHEMA_VERSION)
    backend: BackendSpec | None = None
    calibration_history: list[CalibrationRecord] = field(default_factory=list)
    #: The chip's platform options ({}: the platform's defaults).
    options: dict[str, Any] = field(default_factory=dict)
    #: Where the calibration came from (the ``source`` attribute of 'calibration'); "" when not recorded.
    calibration_source: str = ""

    @property
    def chip_platform(self) -> Platform:
        """The platform of this chip with its options set."""
        platform = get_platform(self.platform)
        return platform.configure({**platform.layout_options(tuple(self.shape)), **self.options}, ProfileError,
                                  f"device {self.device_id}: option")

    @property
    def simulated(self) -> bool:
        """True when the profile carries a fabrication truth (a simulated chip)."""
        return self.fabrication is not None

    @property
    def devices(self) -> int:
        """Number of control devices (rings, phase shifters) on the chip."""
        return get_platform(self.platform).device_count(self.shape)


# --------------------------------------------------------------------------- write


def _write_array(group: h5py.Group, name: str, data: Any, units: str, dtype: Any) -> None:
    array = np.asarray(data, dtype=dtype)
    ds = group.create_dataset(name, data=array, **h5_array_options(array))
    ds.attrs["units"] = units


def _write_faults(group: h5py.Group, values: dict[str, np.ndarray], platform: Platform) -> None:
    """The optional fault fields of a section (codes as uint8, the truth's stuck drives), when it has them."""
    units = fault_units(platform)
    for name, dtype in (("faulty", np.uint8), ("stuck_setting", np.float64)):
        if name in values:
            _write_array(group, name, values[name], units[name], dtype)


def _read_fields(group: h5py.Group, fields: list[str]) -> dict[str, np.ndarray]:
    """A section's per-device fields (float64) and its optional fault fields."""
    out = {k: np.asarray(group[k][()], dtype=np.float64) for k in fields}
    if "faulty" in group:
        out["faulty"] = np.asarray(group["faulty"][()], dtype=np.uint8)
    if "stuck_setting" in group:
        out["stuck_setting"] = np.asarray(group["stuck_setting"][()], dtype=np.float64)
    return out


def write_profile(profile: DeviceProfile, path: str | os.PathLike[str]) -> None:
    """Write ``profile`` to ``path`` atomically; refuse (ProfileError) to write an invalid profile."""
    path = Path(path)
    try:
        platform = get_platform(profile.platform)
    except PnnError as exc:
        raise ProfileError(f"cannot write profile {path}: {exc}") from None
    fields = field_units(platform)
    env_units = environment_units(platform)
    rows, cols = (int(n) for n in profile.shape)
    try:
        _write_profile_file(profile, path, platform, fields, env_units, rows, cols)
    except OSError as exc:
        raise ProfileError(f"cannot write profile {path}: {exc.strerror or exc}; check that the folder "
                           "is writable and has free space") from None


def _write_profile_file(profile: DeviceProfile, path: Path, platform: Platform, fields: dict[str, str],
                        env_units: dict[str, str], rows: int, cols: int) -> None:
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w", libver=HDF5_LIBVER) as f:
            f.attrs["schema_version"] = np.int64(profile.schema_version)
            f.attrs["device_id"] = str(profile.device_id)
            f.attrs["platform"] = str(profile.platform)
            f.attrs["process"] = str(profile.process)
            f.attrs["created"] = str(profile.created)
            f.attrs["simulated"] = np.bool_(profile.simulated)

            layout = f.create_group("layout")
            layout.attrs["rows"] = np.int64(rows)
            layout.attrs["cols"] = np.int64(cols)
            if profile.options:
                options = f.create_group("options")
                for key, value in profile.options.items():
                    options.attrs[str(key)] = value if isinstance(value, str) else \
                        np.int64(value) if isinstance(value, int) else np.float64(value)

            sections = [("calibration", profile.calibration)]
            if profile.fabrication is not None:
                sections.insert(0, ("fabrication", profile.fabrication))
            for section, values in sections:
                grp = f.create_group(section)
                missing = [k for k in fields if k not in values]
                if missing:
                    raise ProfileError(
                        f"cannot write profile {path}: {section} lacks {', '.join(missing)} "
                        f"(platform {platform.name} needs {', '.join(fields)})")
                for name, units in fields.items():
                    _write_array(grp, name, values[name], units, np.float64)
                _write_faults(grp, values, platform)
                if section == "calibration":
                    grp.attrs["measured_at"] = str(profile.calibration_measured_at)
                    grp.attrs["temperature_C"] = np.float64(profile.calibration_temperature_C)
                    if profile.calibration_source:
                        grp.attrs["source"] = str(profile.calibration_source)

            if profile.backend is not None:
                grp = f.create_group("backend")
                grp.attrs["kind"] = str(profile.backend.kind)
                grp.attrs["address"] = str(profile.backend.address)
                for key, value in profile.backend.options.items():
                    grp.attrs[str(key)] = str(value)
            if profile.calibration_history:
                history = f.create_group("calibration_history")
                for k, record in enumerate(profile.calibration_history):
                    grp = history.create_group(f"{k:04d}")
                    for name, units in fields.items():
                        _write_array(grp, name, record.fields[name], units, np.float64)
                    _write_faults(grp, record.fields, platform)
                    grp.attrs["measured_at"] = str(record.measured_at)
                    grp.attrs["temperature_C"] = np.float64(record.temperature_C)
                    grp.attrs["replaced_at"] = str(record.replaced_at)
                    if record.source:
                        grp.attrs["source"] = str(record.source)

            env = profile.environment
            grp = f.create_group("environment")
            _write_array(grp, "drift_coefficient", env.drift_coefficient,
                         env_units["drift_coefficient"], np.float64)
            _write_array(grp, "crosstalk", env.crosstalk, env_units["crosstalk"], np.float64)
            _write_array(grp, "detector_noise", env.detector_noise, env_units["detector_noise"],
                         np.float64)
            _write_array(grp, "dac_bits", int(env.dac_bits), env_units["dac_bits"], np.int64)
            _write_array(grp, "heater_range", tuple(env.heater_range), env_units["heater_range"],
                         np.float64)
            _write_array(grp, "ageing_rate", env.ageing_rate, env_units["ageing_rate"], np.float64)

        problems = validate_profile(tmp)
        if problems:
            raise ProfileError(f"refusing to write invalid profile {path}: {'; '.join(problems)}")


# --------------------------------------------------------------------------- read


def read_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """Read a valid profile; ProfileError listing every problem otherwise."""
    path = Path(path)
    problems = validate_profile(path)
    if problems:
        text = "; ".join(problems)
        if not any(w in text for w in ("upgrade", "regenerate", "fleet make")):
            text += f"; fix these or {REGENERATE_HINT}"
        raise ProfileError(f"profile {path}: {text}")
    try:
        with open_hdf5(path) as f:     # checked again: the file may have changed since it was validated
            platform = get_platform(attr_str(f, "platform") or "")
            fields = list(field_units(platform))
            cal = f["calibration"]
            calibration = _read_fields(cal, fields)
            fabrication = _read_fields(f["fabrication"], fields) if "fabrication" in f else None
            e = f["environment"]
            hr = np.asarray(e["heater_range"][()], dtype=np.float64)
            environment = Environment(
                drift_coefficient=np.asarray(e["drift_coefficient"][()], dtype=np.float64),
                crosstalk=float(e["crosstalk"][()]),
                detector_noise=float(e["detector_noise"][()]),
                dac_bits=int(e["dac_bits"][()]),
                heater_range=(float(hr[0]), float(hr[1])),
                ageing_rate=float(e["ageing_rate"][()]),
            )
            backend = None
            if "backend" in f:
                attrs = {k: attr_str(f["backend"], k) or "" for k in f["backend"].attrs}
                backend = BackendSpec(attrs.pop("kind", ""), attrs.pop("address", ""), attrs, folder=path.parent)
            history = []
            for key in sorted(f["calibration_history"]) if "calibration_history" in f else []:
                grp = f["calibration_history"][key]
                history.append(CalibrationRecord(_read_fields(grp, fields),
                                                 attr_str(grp, "measured_at") or "",
                                                 float(attr_float(grp, "temperature_C")),
                                                 attr_str(grp, "replaced_at") or "",
                                                 attr_str(grp, "source") or ""))
            return DeviceProfile(
                backend=backend,
                calibration_history=history,
                device_id=attr_str(f, "device_id") or "",
                platform=platform.name,
                process=attr_str(f, "process") or "",
                created=attr_str(f, "created") or "",
                shape=(int(f["layout"].attrs["rows"]), int(f["layout"].attrs["cols"])),
                calibration=calibration,
                calibration_measured_at=attr_str(cal, "measured_at") or "",
                calibration_temperature_C=float(attr_float(cal, "temperature_C")),
                calibration_source=attr_str(cal, "source") or "",
                environment=environment,
                fabrication=fabrication,
                schema_version=int(attr_int(f, "schema_version")),
                options=chip_options(f),
            )
    except (OSError, KeyError, ValueError, TypeError) as exc:  # file changed under us
        msg = " ".join(str(exc).split())
        raise ProfileError(f"profile {path}: cannot be read ({msg}); {REGENERATE_HINT}") from None


# --------------------------------------------------------------------------- summary


def calibration_age_days(profile: DeviceProfile, now: datetime | None = None) -> float | None:
    """Days since the calibration was measured (None if the time cannot be parsed)."""
    measured = parse_time(profile.calibration_measured_at)
    if measured is None:
        return None
    now = now or datetime.now(timezone.utc)
    return (now - measured).total_seconds() / 86400.0


def _stats(values: np.ndarray, units: str) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "max_abs": float(np.abs(v).max()),
            "units": units}


def _fault_count(fields: dict[str, np.ndarray], devices: int, kinds: bool = False) -> dict[str, Any]:
    """How many devices a section records as faulty and the fraction of all; with ``kinds`` (the truth, which
    knows them) how many are dead and how many stuck."""
    codes = np.asarray(fields.get("faulty", np.zeros(0, np.uint8)))
    count = int(np.count_nonzero(codes))
    out = {"count": count, "fraction": count / devices if devices else 0.0}
    if kinds:
        out.update(dead=int(np.count_nonzero(codes == DEAD)), stuck=int(np.count_nonzero(codes == STUCK)))
    return out


def profile_summary(profile: DeviceProfile, now: datetime | None = None) -> dict[str, Any]:
    """JSON-ready facts about a profile (for `pnndeploy profile show`)."""
    platform = get_platform(profile.platform)
    fields = field_units(platform)
    env_units = environment_units(platform)
    env = profile.environment
    out: dict[str, Any] = {
        "device_id": profile.device_id,
        "platform": profile.platform,
        "process": profile.process,
        "schema_version": int(profile.schema_version),
        "created": profile.created,
        "simulated": profile.simulated,
        "array": [int(profile.shape[0]), int(profile.shape[1])],
        platform.device_noun: profile.devices,
        "devices": profile.devices,
        "calibration": {
            "measured_at": profile.calibration_measured_at,
            "temperature_C": float(profile.calibration_temperature_C),
            "source": profile.calibration_source or None,
            "fields": {k: _stats(profile.calibration[k], u) for k, u in fields.items()},
            "faulty": _fault_count(profile.calibration, profile.devices),
        },
        "calibration_age_days": calibration_age_days(profile, now),
        "options": profile.chip_platform.option_values(),
        "environment": {
            "crosstalk": float(env.crosstalk),
            "detector_noise": float(env.detector_noise),
            "dac_bits": int(env.dac_bits),
            "heater_range": [float(env.heater_range[0]), float(env.heater_range[1])],
            "ageing_rate": float(env.ageing_rate),
            "drift_coefficient": _stats(env.drift_coefficient, env_units["drift_coefficient"]),
        },
        "environment_units": {k: u for k, u in env_units.items() if k != "drift_coefficient"},
        "backend": None if profile.backend is None else {"kind": profile.backend.kind,
                                                         "address": profile.backend.address,
                                                         **profile.backend.options},
        "calibration_history": [{"measured_at": r.measured_at, "temperature_C": r.temperature_C,
                                 "replaced_at": r.replaced_at, "source": r.source or None}
                                for r in profile.calibration_history],
    }
    if profile.fabrication is not None:
        out["faulty_truth"] = _fault_count(profile.fabrication, profile.devices, kinds=True)
        # against the truth as the chip behaves at rest (a stuck drive and its spill are in its offsets), over the
        # devices that work: a faulty one's calibration is what it realises, not an estimate of its parameters
        truth = resting_truth(platform, profile.fabrication, env.crosstalk, tuple(profile.shape))
        works = ~np.asarray(profile.fabrication.get("faulty", 0), dtype=bool) & \
            ~np.asarray(profile.calibration.get("faulty", 0), dtype=bool)
        out["calibration_error"] = {
            k: _stats((np.asarray(profile.calibration[k]) - np.asarray(truth[k]))[
                works if np.shape(works) == np.shape(truth[k]) and works.any() else ...], u)
            for k, u in fields.items()
        }
    return out


__all__ = ["Environment", "BackendSpec", "CalibrationRecord", "DeviceProfile", "write_profile", "read_profile", "calibration_age_days",
           "profile_summary"]
