"""The device-profile HDF5 schema (schema_version 1) and its validation: every problem of a file in one list.

Field names come from the platform (``platform.offset_name`` and
``platform.param_units``), so a new platform needs no change here.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from pnndeploy.errors import PnnError, ProfileError
from pnndeploy.formats.hdf5 import (attr_float, attr_int, attr_str, hdf5_path_problem, parse_time,
                                    structure_problems)
from pnndeploy.formats.profile_folder import FILE_OPTIONS, check_device_name, credential_name_problem
from pnndeploy.platforms import Platform, get_platform
from pnndeploy.platforms.base import POSITIVE, Range
from pnndeploy.platforms.faults import DEAD, STUCK, WORKS
from pnndeploy.untrusted import brief, control_text

SCHEMA_VERSION = 1

REGENERATE_HINT = "regenerate it with `pnndeploy fleet make`"
#: Longest free text attribute (the process name) a profile may hold; `profile show` prints it.
MAX_TEXT_CHARS = 256


def param_ranges(platform: Platform) -> dict[str, Range]:
    """Allowed range of every parameter of ``platform`` (the platform's table; > 0 when it names none)."""
    own = getattr(platform, "param_ranges", None) or {}
    out: dict[str, Range] = {}
    for name in platform.param_units:
        r = own.get(name, POSITIVE)
        out[name] = r if isinstance(r, Range) else Range(*r)
    return out


# --------------------------------------------------------------------------- units of each field


def field_units(platform: Platform) -> dict[str, str]:
    """Units of every per-device dataset in ``calibration`` / ``fabrication``."""
    units = {platform.offset_name: platform.control_units}
    units.update({k: str(v) for k, v in platform.param_units.items()})
    return units


#: Optional per-device fields of a chip with faulty devices (:mod:`pnndeploy.platforms.faults`), per section:
#: the fault codes each may hold, and whether the section also holds the stuck drives.
FAULT_SECTIONS = {"calibration": ((WORKS, DEAD), False), "fabrication": ((WORKS, DEAD, STUCK), True)}


def fault_units(platform: Platform) -> dict[str, str]:
    """Units of the optional fault fields (``faulty`` codes; the truth's ``stuck_setting``)."""
    return {"faulty": "1", "stuck_setting": platform.control_units}


def environment_units(platform: Platform) -> dict[str, str]:
    u = platform.control_units
    return {
        "drift_coefficient": f"{u}/K",
        "crosstalk": "1",
        "detector_noise": "1",
        "dac_bits": "bit",
        "heater_range": u,
        "ageing_rate": f"{u}/sqrt(day)",
    }


# --------------------------------------------------------------------------- validate


class _Checker:
    """Collects the problems of one open profile."""

    def __init__(self, f: h5py.File) -> None:
        self.f = f
        self.problems: list[str] = []

    def add(self, text: str) -> None:
        self.problems.append(text)

    def group(self, name: str) -> h5py.Group | None:
        obj = self.f.get(name)
        if obj is None:
            self.add(f"missing group '{name}'")
            return None
        if not isinstance(obj, h5py.Group):
            self.add(f"'{name}' is not a group")
            return None
        return obj

    def dataset(self, grp: h5py.Group, name: str, shape: tuple[int, ...] | None,
                kind: str, units: str | None) -> np.ndarray | None:
        """Read and check one dataset; ``kind`` is 'float' or 'int'. None when unusable."""
        where = f"{grp.name.strip('/')}/{name}"
        obj = grp.get(name)
        if obj is None:
            self.add(f"missing dataset '{where}'")
            return None
        if not isinstance(obj, h5py.Dataset):
            self.add(f"'{where}' is not a dataset")
            return None
        unit_attr = attr_str(obj, "units")
        if unit_attr is None:
            self.add(f"'{where}' has no 'units' attribute (expected {brief(units)})"
                     if units is not None else f"'{where}' has no 'units' attribute")
        elif units is not None and unit_attr != units:
            self.add(f"'{where}' has units {brief(unit_attr)}, expected {brief(units)}")
        if shape is not None and obj.shape != shape:
            self.add(f"'{where}' has shape {brief(obj.shape, 60)}, expected {shape}")
            return None                 # never read: a declared shape may be a bomb (structure_problems caps it)
        dt = obj.dtype
        if kind == "float" and dt.kind != "f":
            self.add(f"'{where}' has dtype {dt}, expected a float")
            return None
        if kind == "int" and dt.kind not in "iu":
            self.add(f"'{where}' has dtype {dt}, expected an integer")
            return None
        try:
            data = np.asarray(obj[()])
        except (OSError, ValueError, TypeError) as exc:
            msg = " ".join(str(exc).split())
            self.add(f"'{where}' cannot be read ({msg}): the file is damaged")
            return None
        if kind == "float":
            bad = int(np.count_nonzero(~np.isfinite(data)))
            if bad:
                self.add(f"'{where}' has {bad} non-finite value(s) (NaN or inf)")
        return data

    def in_range(self, where: str, data: np.ndarray | None, rng: Range, units: str = "") -> None:
        if data is None:
            return
        finite = np.isfinite(data)
        bad = finite & ~rng.contains(np.where(finite, data, 0.0))
        count = int(np.count_nonzero(bad))
        if count:
            worst = data[bad].flat[0]
            unit = f" {units}" if units and units != "1" else ""
            self.add(f"'{where}' has {count} value(s) outside {rng.describe()}{unit} "
                     f"(e.g. {worst:g})")


def validate_profile(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of the profile at ``path`` (empty list: valid).  Never raises for bad files."""
    path = Path(path)
    if not path.exists():
        return [f"file not found ({REGENERATE_HINT} or check the path)"]
    try:
        problem = hdf5_path_problem(path)      # before anything opens it: a FIFO would block
        if problem is not None:
            return [f"the path {problem}; give the path of a .h5 profile"]
        size = path.stat().st_size
        if size == 0:
            return [f"the file is empty (0 bytes), e.g. an interrupted copy; {REGENERATE_HINT} or copy it again"]
        if not h5py.is_hdf5(path):
            return ["not an HDF5 file (a profile is written by `pnndeploy fleet make`)"]
        with h5py.File(path, "r") as f:
            unsafe = structure_problems(f)     # nothing is read (or followed) before this passes
            return unsafe if unsafe else _validate_open(f)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError,
            IndexError, OverflowError, UnicodeError) as exc:
        msg = " ".join(str(exc).split())
        if "truncated file" in msg:
            return [f"the file is truncated ({msg}), e.g. an interrupted copy; {REGENERATE_HINT} or copy it again"]
        return [f"cannot read the file as HDF5 ({msg}); {REGENERATE_HINT}"]


def _version_problem(f: h5py.File) -> str | None:
    """Why the file's schema version cannot be read here (None: it can).

    Checked first: a file of another version is judged by nothing else.
    """
    version = attr_int(f, "schema_version")
    if "schema_version" not in f.attrs:
        return f"no 'schema_version' attribute: not a pnndeploy profile; {REGENERATE_HINT}"
    if version is None:
        return f"'schema_version' is not an integer; {REGENERATE_HINT}"
    if version > SCHEMA_VERSION:
        return (f"schema_version {version} was written by a newer pnndeploy "
                f"(this one reads {SCHEMA_VERSION}); upgrade pnndeploy")
    if version < SCHEMA_VERSION:
        # there is no older released schema to migrate from: version 1 is the first
        return (f"schema_version {version} is older than {SCHEMA_VERSION}, the oldest this pnndeploy reads, "
                f"and no migration exists for it; write it again in schema {SCHEMA_VERSION} from the "
                f"chip's measurements (or {REGENERATE_HINT} for a simulated chip)")
    return None


def _check_root_attrs(c: _Checker) -> bool | None:
    """Check the root's text attributes and 'simulated'; returns 'simulated' (None when unusable)."""
    f = c.f
    for name in ("device_id", "process", "created"):
        if attr_str(f, name) is None:
            c.add(f"missing or non-text root attribute '{name}'")
    process = attr_str(f, "process")
    if process is not None and len(process) > MAX_TEXT_CHARS:
        c.add(f"root attribute 'process' ({brief(process, 40)}) is longer than {MAX_TEXT_CHARS} characters")
    elif process is not None and control_text(process) is not None:
        c.add(f"root attribute 'process' ({brief(process, 40)}) holds control characters (terminal escape "
              "sequences?); name the process in plain text")
    device_id = attr_str(f, "device_id")
    if device_id is not None:
        try:
            check_device_name(device_id)
        except ProfileError as exc:
            # the id names the deployment file: a path here would write outside the deployments folder
            c.add(f"root attribute 'device_id' is not a valid name ({str(exc).split(';')[0]})")
    created = attr_str(f, "created")
    if created is not None and parse_time(created) is None:
        c.add(f"root attribute 'created' ({brief(created)}) is not an ISO-8601 time with a UTC offset")
    sim_attr = f.attrs.get("simulated")
    if sim_attr is None or not isinstance(sim_attr, (bool, np.bool_)):
        c.add("missing or non-boolean root attribute 'simulated'")
        return None
    return bool(sim_attr)


def chip_options(f: h5py.File) -> dict[str, Any]:
    """The 'options' group's attributes (the chip's platform options, e.g. a diffractive setup's pixel pitch) as
    Python values; {} without the group (the platform's defaults)."""
    group = f.get("options") if "options" in f else None
    if not isinstance(group, h5py.Group):
        return {}
    values: dict[str, Any] = {}
    for key in list(group.attrs)[:64]:
        value = group.attrs[key]
        text = attr_str(group, key)
        if text is not None:
            values[str(key)] = text
        elif isinstance(value, (np.integer, int)) and not isinstance(value, (bool, np.bool_)):
            values[str(key)] = int(value)
        elif isinstance(value, (np.floating, float)):
            values[str(key)] = float(value)
        else:
            values[str(key)] = value         # refused by the platform's check, by name
    return values


def _check_platform(c: _Checker) -> Platform | None:
    """The platform the root names, with the chip's options set; None (and a problem) when it is missing or
    unknown, or its options are not the platform's."""
    platform_name = attr_str(c.f, "platform")
    if platform_name is None:
        c.add("missing or non-text root attribute 'platform'")
        return None
    try:
        platform = get_platform(platform_name)
    except PnnError:
        from pnndeploy.platforms import PLATFORMS

        shown = platform_name if len(platform_name) <= 40 else platform_name[:40] + "..."
        c.add(f"platform {shown!r} is unknown to this pnndeploy (it knows {', '.join(sorted(PLATFORMS))}); "
              "use a profile of the model's platform, or upgrade pnndeploy if the profile is newer")
        return None
    if "options" in c.f and not isinstance(c.f["options"], h5py.Group):
        c.add("'options' is not a group")
        return platform
    layout = c.f.get("layout") if isinstance(c.f.get("layout"), h5py.Group) else None
    rows, cols = (attr_int(layout, "rows"), attr_int(layout, "cols")) if layout is not None else (None, None)
    implied = platform.layout_options((rows, cols)) if rows and cols and rows > 0 and cols > 0 else {}
    try:
        return platform.configure({**implied, **chip_options(c.f)}, ProfileError, "'options'")
    except ProfileError as exc:
        c.add(f"{exc}; fix the attribute or {REGENERATE_HINT}")
        return platform            # the other checks against the platform's defaults


def _check_layout(c: _Checker, platform: Platform | None) -> tuple[int, int] | None:
    """The array shape (rows, cols) of 'layout'; None when unusable, so shapes go unchecked."""
    layout = c.group("layout")
    if layout is None:
        return None
    rows, cols = attr_int(layout, "rows"), attr_int(layout, "cols")
    if rows is None or cols is None:
        c.add("'layout' needs integer attributes 'rows' and 'cols'")
    elif rows < 1 or cols < 1:
        c.add(f"'layout' rows={rows}, cols={cols}: both must be >= 1")
    elif platform is not None and platform.layout_problem((rows, cols)):
        c.add(f"'layout' rows={rows}, cols={cols}: {platform.layout_problem((rows, cols))}")
    else:
        return (rows, cols)
    return None


def _check_calibration_attrs(c: _Checker, grp: h5py.Group) -> None:
    """Check the calibration's 'measured_at' and 'temperature_C': the reference point of later drift."""
    measured = attr_str(grp, "measured_at")
    if measured is None:
        c.add("'calibration' has no text attribute 'measured_at'")
    elif parse_time(measured) is None:
        c.add(f"'calibration' measured_at ({brief(measured)}) is not an ISO-8601 time "
              "with a UTC offset")
    temp = attr_float(grp, "temperature_C")
    if temp is None or not math.isfinite(temp):
        c.add("'calibration' has no finite number attribute 'temperature_C'")
    if "source" in grp.attrs:          # optional provenance, printed by `profile show`
        source = attr_str(grp, "source")
        if source is None or len(source) > MAX_TEXT_CHARS or control_text(source) is not None:
            c.add(f"'calibration' source ({brief(source)}) must be text of at most {MAX_TEXT_CHARS} characters "
                  "without control characters")


def _check_device_fields(c: _Checker, platform: Platform | None, shape: tuple[int, int] | None,
                         simulated: bool | None) -> None:
    """Check the per-device datasets of 'calibration' and (for a simulated chip) 'fabrication'."""
    f = c.f
    has_fab = "fabrication" in f
    if simulated is True and not has_fab:
        c.add("simulated is true but the 'fabrication' group (the truth) is missing")
    if simulated is False and has_fab:
        c.add("simulated is false but a 'fabrication' group is present")
    sections = ["calibration"] + (["fabrication"] if has_fab else [])
    for section in sections:
        grp = c.group(section)
        if grp is None:
            continue
        if section == "calibration":
            _check_calibration_attrs(c, grp)
        if platform is None:
            continue
        ranges = param_ranges(platform)
        for name, units in field_units(platform).items():
            data = c.dataset(grp, name, platform.field_shape(name, shape) if shape else None, "float", units)
            if name in ranges:
                c.in_range(f"{section}/{name}", data, ranges[name], units)
        _check_fault_fields(c, grp, section, platform, shape)


def _check_fault_fields(c: _Checker, grp: h5py.Group, section: str, platform: Platform,
                        shape: tuple[int, int] | None) -> None:
    """Check a section's optional fault fields: integer codes the section may hold, of the devices' shape, and
    (in the truth) the stuck drives beside them; refused on a platform that does not model faults."""
    if "faulty" not in grp and "stuck_setting" not in grp:
        return
    codes, with_drive = FAULT_SECTIONS.get(section, ((WORKS, DEAD), False))
    where = grp.name.strip("/")
    if not platform.faults_supported:
        c.add(f"'{where}' records faulty devices but {platform.name} chips do not model them; remove "
              "'faulty' and 'stuck_setting'")
        return
    units = fault_units(platform)
    device_shape = platform.device_shape(shape) if shape else None
    faulty = c.dataset(grp, "faulty", device_shape, "int", units["faulty"])
    if faulty is not None and not np.isin(faulty, codes).all():
        c.add(f"'{where}/faulty' holds codes other than {', '.join(map(str, codes))} (0 works, 1 dead"
              + (", 2 stuck)" if STUCK in codes else " or stuck)"))
    if with_drive:
        drive = c.dataset(grp, "stuck_setting", device_shape, "float", units["stuck_setting"])
        if faulty is not None and drive is not None and faulty.shape == drive.shape \
                and np.any((faulty != STUCK) & (drive != 0)):
            c.add(f"'{where}/stuck_setting' is not 0 on a device that is not stuck (code 2); a working or dead "
                  "device holds no drive")
    elif "stuck_setting" in grp:
        c.add(f"'{where}/stuck_setting' belongs to the fabrication truth only (a calibration folds a stuck "
              "drive into the offset)")


def _check_backend(c: _Checker) -> None:
    """Check the optional 'backend' group: how the chip is reached."""
    if "backend" not in c.f:
        return
    backend = c.f["backend"]
    if not isinstance(backend, h5py.Group):
        c.add("'backend' is not a group")
        return
    if not attr_str(backend, "kind"):
        c.add("'backend' needs a non-empty text attribute 'kind' (e.g. 'http')")
    if attr_str(backend, "address") is None:
        c.add("'backend' needs a text attribute 'address' (e.g. 'http://127.0.0.1:8470')")
    bad = [k for k in backend.attrs if attr_str(backend, k) is None]
    if bad:
        c.add(f"'backend' attributes {', '.join(sorted(bad))} are not text")
    for key in FILE_OPTIONS:           # files a profile names: plain names in its tokens/ folder
        value = attr_str(backend, key)
        problem = credential_name_problem(key, value) if value else None
        if problem:
            c.add(problem)


def _check_history(c: _Checker, platform: Platform | None, shape: tuple[int, int] | None) -> None:
    """Check the optional 'calibration_history' group: earlier calibrations, one group each."""
    if "calibration_history" not in c.f:
        return
    history = c.f["calibration_history"]
    if not isinstance(history, h5py.Group):
        c.add("'calibration_history' is not a group")
        return
    for key in sorted(history):
        grp = history[key]
        if not isinstance(grp, h5py.Group):
            c.add(f"'calibration_history/{key}' is not a group")
            continue
        if parse_time(attr_str(grp, "measured_at") or "") is None:
            c.add(f"'calibration_history/{key}' has no ISO-8601 'measured_at'")
        temp = attr_float(grp, "temperature_C")
        if temp is None or not math.isfinite(temp):
            c.add(f"'calibration_history/{key}' has no finite 'temperature_C'")
        if platform is not None:
            for name, units in field_units(platform).items():
                c.dataset(grp, name, platform.field_shape(name, shape) if shape else None, "float", units)
            _check_fault_fields(c, grp, "calibration", platform, shape)


def _check_heater_range(c: _Checker, hr: np.ndarray | None, bits: np.ndarray | None) -> None:
    """Check that the heater range is ordered, finite in span, and wide enough for one DAC step."""
    if hr is None or hr.shape != (2,) or not np.all(np.isfinite(hr)):
        return
    with np.errstate(all="ignore"):
        span = float(hr[1]) - float(hr[0])
    if not hr[0] < hr[1]:
        c.add(f"'environment/heater_range' [{hr[0]:g}, {hr[1]:g}] needs low < high")
    elif not math.isfinite(span):
        c.add(f"'environment/heater_range' [{hr[0]:g}, {hr[1]:g}] spans more than a float can hold")
    elif bits is not None and bits.shape == () and 1 <= int(bits) <= 32 \
            and not span / (2 ** int(bits) - 1) > 0:
        c.add(f"'environment/heater_range' [{hr[0]:g}, {hr[1]:g}] is too narrow for "
              f"{int(bits)} DAC bits (the step would be 0)")


def _check_environment(c: _Checker, platform: Platform | None, shape: tuple[int, int] | None) -> None:
    """Check the 'environment' group: drift, crosstalk, noise, DAC bits, heater range and ageing."""
    env = c.group("environment")
    if env is None:
        return
    eu = environment_units(platform) if platform is not None else {}
    drift_shape = platform.device_shape(shape) if shape and platform is not None else shape
    c.dataset(env, "drift_coefficient", drift_shape, "float", eu.get("drift_coefficient"))
    xt = c.dataset(env, "crosstalk", (), "float", eu.get("crosstalk"))
    c.in_range("environment/crosstalk", xt, Range(0.0, 0.5, True, False))
    noise = c.dataset(env, "detector_noise", (), "float", eu.get("detector_noise"))
    c.in_range("environment/detector_noise", noise, Range(0.0, math.inf, True, False))
    bits = c.dataset(env, "dac_bits", (), "int", eu.get("dac_bits"))
    if bits is not None and bits.shape == () and not 1 <= int(bits) <= 32:
        c.add(f"'environment/dac_bits' is {int(bits)}, expected 1..32")
    hr = c.dataset(env, "heater_range", (2,), "float", eu.get("heater_range"))
    _check_heater_range(c, hr, bits)
    age = c.dataset(env, "ageing_rate", (), "float", eu.get("ageing_rate"))
    c.in_range("environment/ageing_rate", age, Range(0.0, math.inf, True, False))


def _validate_open(f: h5py.File) -> list[str]:
    """Every problem of an open, structurally safe profile, in a fixed order (root, layout, fields,
    backend, history, environment) so the list reads the same on every run."""
    version_problem = _version_problem(f)
    if version_problem is not None:
        return [version_problem]
    c = _Checker(f)
    simulated = _check_root_attrs(c)
    platform = _check_platform(c)
    shape = _check_layout(c, platform)
    _check_device_fields(c, platform, shape, simulated)
    _check_backend(c)
    _check_history(c, platform, shape)
    _check_environment(c, platform, shape)
    return c.problems
