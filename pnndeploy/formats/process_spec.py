"""Process specs (``process.yaml``): the spreads of every fabricated quantity, checked key by key.

A spec names its platform; the keys of its ``ring`` section are whatever that
platform's fabrication model reads (learnt from a dry run), so a new platform
needs no change here.
"""

from __future__ import annotations

import math
import os
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from pnndeploy.errors import ConfigError, PnnError
from pnndeploy.formats.yamlio import read_yaml_file
from pnndeploy.platforms import PLATFORMS, Platform, get_platform
from pnndeploy.platforms.faults import FAULT_KEYS, MAX_FAULT_FRACTION
from pnndeploy.untrusted import brief, control_text

PROCESS_SCHEMA_VERSION = 1
#: Top-level keys; "ring" stands for the platform's ``device_section`` (the fabricated devices' spreads).
_TOP_KEYS = ("schema_version", "name", "platform", "array", "ring", "calibration", "environment")


def _top_keys(process: Mapping[str, Any]) -> tuple[str, ...]:
    """The top-level keys of a spec of its platform (the default's when the platform is not known yet)."""
    try:
        section = get_platform(process.get("platform")).device_section
    except (PnnError, TypeError):
        return _TOP_KEYS
    return tuple(section if key == "ring" else key for key in _TOP_KEYS)


# --------------------------------------------------------------------------- process spec


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _RecordingMapping(Mapping[str, Any]):
    """A read-only mapping that remembers which keys were asked for."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = data
        self.used: set[str] = set()
        self.missing: list[str] = []

    def __getitem__(self, key: str) -> Any:
        self.used.add(key)
        if key not in self._data:
            self.missing.append(key)
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def process_keys(platform: Platform) -> dict[str, str]:
    """Names of the platform-dependent keys of process.yaml."""
    u = platform.control_units
    return {
        "offset_sigma": f"{platform.offset_name}_sigma_{u}",
        "heater_range": f"heater_range_{u}",
        "ageing": f"ageing_{u}_per_sqrt_day",
    }


def _fail(source: str, key: str, what: str) -> ConfigError:
    """The error for one bad key, worded the same for every key so users can grep it."""
    return ConfigError(f"{source}: key '{key}' {what}; fix it in the process file")


def _section(source: str, parent: Mapping[str, Any], key: str, prefix: str = "") -> Mapping[str, Any]:
    """A required sub-mapping; its absence or wrong type is reported with its dotted name."""
    full = f"{prefix}{key}"
    if key not in parent:
        raise _fail(source, full, "is missing")
    value = parent[key]
    if not isinstance(value, Mapping):
        raise _fail(source, full, f"must be a mapping, got {type(value).__name__}")
    return value


def _number(source: str, parent: Mapping[str, Any], key: str, prefix: str,
            lo: float | None = None, lo_incl: bool = True,
            hi: float | None = None, hi_incl: bool = True) -> float:
    """A required finite number within optional bounds, so every spread is checked alike."""
    full = f"{prefix}{key}"
    if key not in parent:
        raise _fail(source, full, "is missing")
    v = parent[key]
    if not _is_number(v):
        raise _fail(source, full, f"must be a finite number, got {brief(v)}")
    if lo is not None and (v < lo or (v == lo and not lo_incl)):
        raise _fail(source, full, f"must be {'>=' if lo_incl else '>'} {lo:g}, got {brief(v)}")
    if hi is not None and (v > hi or (v == hi and not hi_incl)):
        raise _fail(source, full, f"must be {'<=' if hi_incl else '<'} {hi:g}, got {brief(v)}")
    return float(v)


def _no_unknown(source: str, parent: Mapping[str, Any], allowed: Any, prefix: str) -> None:
    """Reject the first key not in ``allowed``: a typo must not silently fall back to a default."""
    unknown = [k for k in parent if k not in allowed]
    if unknown:
        raise _fail(source, f"{prefix}{brief(unknown[0], 60, quote=False)}",
                    f"is unknown (allowed here: {', '.join(allowed)})")


def _check_header(process: Mapping[str, Any], source: str) -> Platform:
    """Check the top-level keys, version, name and platform; returns the platform named."""
    top_keys = _top_keys(process)
    _no_unknown(source, process, (*top_keys, "options", "faults"), "")
    for key in top_keys:
        if key not in process:
            raise _fail(source, key, "is missing")

    version = process["schema_version"]
    if not _is_int(version):
        raise _fail(source, "schema_version", f"must be an integer, got {brief(version)}")
    if version != PROCESS_SCHEMA_VERSION:
        raise _fail(source, "schema_version",
                    f"is {version}, this pnndeploy reads {PROCESS_SCHEMA_VERSION}"
                    + ("; upgrade pnndeploy or" if version > PROCESS_SCHEMA_VERSION else ";"))
    if not isinstance(process["name"], str) or not process["name"].strip():
        raise _fail(source, "name", f"must be a non-empty string, got {brief(process['name'])}")
    if len(process["name"]) > 256 or control_text(process["name"]) is not None:
        raise _fail(source, "name", f"must be plain text of at most 256 characters (it is printed), got "
                                    f"{brief(process['name'])}")
    if not isinstance(process["platform"], str):
        raise _fail(source, "platform", f"must be a string, got {brief(process['platform'])}")
    try:
        platform = get_platform(process["platform"])
    except PnnError as exc:
        raise ConfigError(f"{source}: key 'platform': {exc}") from None
    options = process.get("options", {})
    if not isinstance(options, Mapping):
        raise _fail(source, "options", f"must be a mapping of the platform's options, got {brief(options)}")
    return platform.configure({**_implied(process, platform), **options}, ConfigError, f"{source}: key 'options':")


def _implied(process: Mapping[str, Any], platform: Platform) -> dict[str, Any]:
    """The options a spec's array implies (a mesh's modes), when it does not state them."""
    array = process.get("array")
    rows, cols = (array.get("rows"), array.get("cols")) if isinstance(array, Mapping) else (None, None)
    if not (_is_int(rows) and _is_int(cols) and rows > 0 and cols > 0):
        return {}
    return platform.layout_options((rows, cols))


def process_platform(process: Mapping[str, Any]) -> Platform:
    """The platform of a checked process spec's chips, with the spec's ``options`` set (or implied by its array)."""
    platform = get_platform(process["platform"])
    return platform.configure({**_implied(process, platform), **process.get("options", {})}, ConfigError,
                              "process spec key 'options':")


def _check_array(process: Mapping[str, Any], platform: Platform, source: str) -> None:
    """Check ``array``: positive rows and cols that the platform can lay out."""
    array = _section(source, process, "array")
    _no_unknown(source, array, ("rows", "cols"), "array.")
    for key in ("rows", "cols"):
        if key not in array:
            raise _fail(source, f"array.{key}", "is missing")
        if not _is_int(array[key]) or array[key] < 1:
            raise _fail(source, f"array.{key}", f"must be a positive integer, got {brief(array[key])}")
    problem = platform.layout_problem((array["rows"], array["cols"]))
    if problem:
        raise _fail(source, "array", f"rows={array['rows']}, cols={array['cols']}: {problem}")


def _check_devices(process: Mapping[str, Any], platform: Platform, source: str) -> None:
    """Check the devices' section against the keys the platform's fabrication model reads.

    Those keys are learnt from a dry run, so a new platform needs no change here.
    """
    name = platform.device_section
    devices = _section(source, process, name)
    for key, value in devices.items():
        if not _is_number(value):
            raise _fail(source, f"{name}.{key}", f"must be a finite number, got {brief(value)}")
        if "sigma" in str(key) and value < 0:
            raise _fail(source, f"{name}.{key}",
                        f"is a standard deviation and must be >= 0, got {brief(value)}")
    recorder = _RecordingMapping(devices)
    try:
        platform.sample_fabrication(recorder, platform.minimal_layout, np.random.default_rng(0))
    except KeyError:
        raise _fail(source, f"{name}.{recorder.missing[0]}" if recorder.missing else name,
                    f"is missing (platform {platform.name} needs "
                    f"{', '.join(sorted(recorder.used))})") from None
    _no_unknown(source, devices, sorted(recorder.used), f"{name}.")


def _check_measured_at(cal: Mapping[str, Any], source: str) -> datetime:
    """Parse ``calibration.measured_at`` to an aware time (a YAML timestamp without offset is UTC)."""
    if "measured_at" not in cal:
        raise _fail(source, "calibration.measured_at", "is missing")
    measured = cal["measured_at"]
    if isinstance(measured, datetime):
        return measured if measured.tzinfo else measured.replace(tzinfo=timezone.utc)
    if isinstance(measured, str):
        try:
            measured_dt = datetime.fromisoformat(measured)
        except ValueError:
            raise _fail(source, "calibration.measured_at",
                        f"must be an ISO-8601 time like \"2026-11-01T09:00:00+00:00\", "
                        f"got {brief(measured)}") from None
        if measured_dt.tzinfo is None:
            raise _fail(source, "calibration.measured_at",
                        f"needs a UTC offset (e.g. +00:00), got {brief(measured)}")
        return measured_dt
    if isinstance(measured, date):
        raise _fail(source, "calibration.measured_at",
                    f"needs a time and UTC offset, e.g. \"{measured.isoformat()}T09:00:00+00:00\"")
    raise _fail(source, "calibration.measured_at",
                f"must be an ISO-8601 time string, got {brief(measured)}")


def _check_calibration(process: Mapping[str, Any], platform: Platform,
                       source: str) -> tuple[Mapping[str, Any], datetime]:
    """Check ``calibration``; returns the section and its measurement time (with a UTC offset)."""
    names = process_keys(platform)
    cal = _section(source, process, "calibration")
    _no_unknown(source, cal, (names["offset_sigma"], "param_rel_sigma", "temperature_C", "measured_at"),
                "calibration.")
    _number(source, cal, names["offset_sigma"], "calibration.", lo=0.0)
    rel = _section(source, cal, "param_rel_sigma", "calibration.")
    _no_unknown(source, rel, list(platform.param_units), "calibration.param_rel_sigma.")
    for key in platform.param_units:
        _number(source, rel, key, "calibration.param_rel_sigma.", lo=0.0)
    _number(source, cal, "temperature_C", "calibration.", lo=-273.15, lo_incl=False)
    return cal, _check_measured_at(cal, source)


def _check_environment(process: Mapping[str, Any], platform: Platform, source: str) -> None:
    """Check ``environment``: crosstalk, detector noise, DAC bits, heater range and ageing."""
    names = process_keys(platform)
    env = _section(source, process, "environment")
    _no_unknown(source, env, ("crosstalk", "detector_noise", "dac_bits", names["heater_range"],
                              names["ageing"]), "environment.")
    _number(source, env, "crosstalk", "environment.", lo=0.0, hi=0.5, hi_incl=False)
    _number(source, env, "detector_noise", "environment.", lo=0.0)
    if "dac_bits" not in env:
        raise _fail(source, "environment.dac_bits", "is missing")
    if not _is_int(env["dac_bits"]) or not 1 <= env["dac_bits"] <= 32:
        raise _fail(source, "environment.dac_bits",
                    f"must be an integer in 1..32, got {brief(env['dac_bits'])}")
    hr_key = names["heater_range"]
    if hr_key not in env:
        raise _fail(source, f"environment.{hr_key}", "is missing")
    hr = env[hr_key]
    if (not isinstance(hr, (list, tuple)) or len(hr) != 2 or not all(_is_number(v) for v in hr)
            or not hr[0] < hr[1]):
        raise _fail(source, f"environment.{hr_key}",
                    f"must be [low, high] numbers with low < high, got {brief(hr)}")
    _number(source, env, names["ageing"], "environment.", lo=0.0)


def _check_faults(process: Mapping[str, Any], platform: Platform, source: str) -> None:
    """Check the optional ``faults`` section: fractions of dead and stuck devices each chip is drawn with."""
    if "faults" not in process:
        return
    faults = _section(source, process, "faults")
    _no_unknown(source, faults, FAULT_KEYS, "faults.")
    if not platform.faults_supported:
        modelled = ", ".join(name for name, p in PLATFORMS.items() if p.faults_supported)
        raise _fail(source, "faults", f"is not modelled for {platform.name} chips (faulty devices are for: "
                                      f"{modelled}); remove the section")
    total = sum(_number(source, faults, key, "faults.", lo=0.0, hi=MAX_FAULT_FRACTION)
                for key in FAULT_KEYS if key in faults)
    if total > MAX_FAULT_FRACTION:
        raise _fail(source, "faults", f"draws {total:g} of the devices faulty, more than {MAX_FAULT_FRACTION:g}: "
                                      "lower dead_fraction + stuck_fraction")


def check_process(process: Any, source: str = "process spec") -> dict[str, Any]:
    """Check a process spec (as loaded from YAML); ConfigError naming ``source`` and the key.

    Returns the spec with ``calibration.measured_at`` normalised to an ISO-8601 string.
    The sections are checked in a fixed order (header, array, devices, calibration,
    environment), so which problem is reported first for a file with several is stable.
    """
    if not isinstance(process, Mapping):
        raise ConfigError(f"{source}: must be a YAML mapping with keys {', '.join(_TOP_KEYS)}; "
                          "fix the process file")
    platform = _check_header(process, source)
    _check_array(process, platform, source)
    _check_devices(process, platform, source)
    cal, measured_dt = _check_calibration(process, platform, source)
    _check_environment(process, platform, source)
    _check_faults(process, platform, source)

    out = dict(process)
    out["calibration"] = dict(cal)
    out["calibration"]["measured_at"] = measured_dt.isoformat()
    return out


def load_process(path: str | os.PathLike[str], flag: str = "--process") -> dict[str, Any]:
    """Read and check a process spec (YAML, safe_load only); ConfigError naming the file and key.

    ``flag`` is the option that named the file, for the hint of a missing one.
    """
    path = Path(path)
    where = f"process file {path}"
    data = read_yaml_file(path, where, f"pass an existing process.yaml with {flag} "
                                       "(the default is device_profiles/process.yaml)")
    return check_process(data, source=where)


__all__ = ["PROCESS_SCHEMA_VERSION", "check_process", "load_process", "process_keys", "process_platform"]
