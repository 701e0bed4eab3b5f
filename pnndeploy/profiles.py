"""Device profiles: one HDF5 file per chip (schema_version 1).

A profile holds what the lab knows about one chip:

* ``calibration``: the measured per-device offset and transfer-function
  parameters (what the mapper uses), with the time and temperature of the
  measurement;
* ``environment``: per-device drift coefficients and per-chip noise, crosstalk,
  DAC resolution, heater range and ageing rate;
* ``fabrication`` (simulated chips only): the truth the simulator evaluates on.

Field names come from the platform (``platform.offset_name`` and
``platform.param_units``), so a new platform needs no change here.  Files are
plain HDF5 (datasets with ``units`` attributes), readable with h5dump/HDFView.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np

from pnndeploy.atomic import atomic_path
from pnndeploy.errors import PnnError, ProfileError
from pnndeploy.platforms import Platform, get_platform

SCHEMA_VERSION = 1

#: Environment variable naming the profiles folder when ``--profiles`` is not given.
PROFILES_ENV = "PNNDEPLOY_PROFILES"
DEFAULT_PROFILES_DIR = "device_profiles"

_REGENERATE = "regenerate it with `pnndeploy fleet make`"


class Range(NamedTuple):
    """An allowed interval of a per-device parameter."""

    lo: float
    hi: float
    lo_inclusive: bool = False
    hi_inclusive: bool = True

    def contains(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        above = values >= self.lo if self.lo_inclusive else values > self.lo
        below = values <= self.hi if self.hi_inclusive else values < self.hi
        return above & below

    def describe(self) -> str:
        left = "[" if self.lo_inclusive else "("
        right = "]" if self.hi_inclusive else ")"
        hi = "inf" if math.isinf(self.hi) else f"{self.hi:g}"
        return f"{left}{self.lo:g}, {hi}{right}"

    def clip(self, values: np.ndarray) -> np.ndarray:
        """``values`` moved into the range (open ends by one ulp)."""
        lo = self.lo if self.lo_inclusive else np.nextafter(self.lo, np.inf)
        hi = self.hi if self.hi_inclusive else np.nextafter(self.hi, -np.inf)
        return np.clip(values, lo, hi)


#: Fallback physical ranges of per-device parameters, keyed by field name.  A
#: platform may provide its own ``param_ranges`` mapping (same shape), which wins.
#: A parameter named in ``platform.param_units`` but in neither table must be > 0.
PARAM_RANGES: dict[str, Range] = {
    "gamma": Range(0.0, math.inf, lo_inclusive=False, hi_inclusive=False),
    "a": Range(0.0, 1.0, lo_inclusive=False, hi_inclusive=True),
}
_POSITIVE = Range(0.0, math.inf, lo_inclusive=False, hi_inclusive=False)


def param_ranges(platform: Platform) -> dict[str, Range]:
    """Allowed range of every parameter of ``platform`` (platform table, then fallback, then > 0)."""
    own = getattr(platform, "param_ranges", None) or {}
    out: dict[str, Range] = {}
    for name in platform.param_units:
        r = own.get(name, PARAM_RANGES.get(name, _POSITIVE))
        out[name] = r if isinstance(r, Range) else Range(*r)
    return out


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

    @property
    def simulated(self) -> bool:
        """True when the profile carries a fabrication truth (a simulated chip)."""
        return self.fabrication is not None

    @property
    def rings(self) -> int:
        return int(self.shape[0] * self.shape[1])


# --------------------------------------------------------------------------- units of each field


def _field_units(platform: Platform) -> dict[str, str]:
    """Units of every per-device dataset in ``calibration`` / ``fabrication``."""
    units = {platform.offset_name: platform.control_units}
    units.update({k: str(v) for k, v in platform.param_units.items()})
    return units


def _environment_units(platform: Platform) -> dict[str, str]:
    u = platform.control_units
    return {
        "drift_coefficient": f"{u}/K",
        "crosstalk": "1",
        "detector_noise": "1",
        "dac_bits": "bit",
        "heater_range": u,
        "ageing_rate": f"{u}/sqrt(day)",
    }


# --------------------------------------------------------------------------- write


#: HDF5 file-format bounds of written files: 1.10 formats carry checksums of the file's internal
#: structure, so most damaged files give a clean error instead of confusing the HDF5 library
#: (readable by HDF5 >= 1.10, h5dump and HDFView included).
HDF5_LIBVER = ("v110", "v110")


def h5_array_options(array: np.ndarray) -> dict[str, Any]:
    """Dataset options for an array: a Fletcher-32 checksum (one chunk) so damaged values are refused."""
    if array.ndim == 0 or array.size == 0:
        return {}
    # one chunk for ordinary arrays; HDF5 limits a chunk to 4 GiB, so let it split huge ones
    return {"chunks": array.shape if array.nbytes <= 2**26 else True, "fletcher32": True}


def _write_array(group: h5py.Group, name: str, data: Any, units: str, dtype: Any) -> None:
    array = np.asarray(data, dtype=dtype)
    ds = group.create_dataset(name, data=array, **h5_array_options(array))
    ds.attrs["units"] = units


def write_profile(profile: DeviceProfile, path: str | os.PathLike[str]) -> None:
    """Write ``profile`` to ``path`` atomically; refuse (ProfileError) to write an invalid profile."""
    path = Path(path)
    try:
        platform = get_platform(profile.platform)
    except PnnError as exc:
        raise ProfileError(f"cannot write profile {path}: {exc}") from None
    fields = _field_units(platform)
    env_units = _environment_units(platform)
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
                if section == "calibration":
                    grp.attrs["measured_at"] = str(profile.calibration_measured_at)
                    grp.attrs["temperature_C"] = np.float64(profile.calibration_temperature_C)

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


# --------------------------------------------------------------------------- validate


def _attr_str(obj: h5py.HLObject, name: str) -> str | None:
    """A text attribute as str; None when it is missing, not text, or not valid UTF-8."""
    value = obj.attrs.get(name)
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "OSU":
        value = value[()]
    return _decode(value)


def _decode(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        try:
            value.encode("utf-8")  # h5py decodes bad bytes to lone surrogates, which nothing can print
        except UnicodeEncodeError:
            return None
        return value
    return None


def _attr_number(obj: h5py.HLObject, name: str) -> Any:
    """A numeric scalar attribute (a 1-element array counts), or None; booleans are not numbers."""
    value = obj.attrs.get(name)
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(())[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return value


def _attr_int(obj: h5py.HLObject, name: str) -> int | None:
    value = _attr_number(obj, name)
    return int(value) if isinstance(value, (int, np.integer)) else None


def _attr_float(obj: h5py.HLObject, name: str) -> float | None:
    value = _attr_number(obj, name)
    return None if value is None else float(value)


def _parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else None


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
        unit_attr = _attr_str(obj, "units")
        if unit_attr is None:
            self.add(f"'{where}' has no 'units' attribute (expected {units!r})"
                     if units is not None else f"'{where}' has no 'units' attribute")
        elif units is not None and unit_attr != units:
            self.add(f"'{where}' has units {unit_attr!r}, expected {units!r}")
        if shape is not None and obj.shape != shape:
            self.add(f"'{where}' has shape {obj.shape}, expected {shape}")
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
        return [f"file not found ({_REGENERATE} or check the path)"]
    if not path.is_file():
        return ["not a file (a folder?); give the path of a .h5 profile"]
    try:
        size = path.stat().st_size
        if size == 0:
            return [f"the file is empty (0 bytes), e.g. an interrupted copy; {_REGENERATE} or copy it again"]
        if not h5py.is_hdf5(path):
            return ["not an HDF5 file (a profile is written by `pnndeploy fleet make`)"]
        with h5py.File(path, "r") as f:
            return _validate_open(f)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError,
            IndexError, OverflowError, UnicodeError) as exc:
        msg = " ".join(str(exc).split())
        if "truncated file" in msg:
            return [f"the file is truncated ({msg}), e.g. an interrupted copy; {_REGENERATE} or copy it again"]
        return [f"cannot read the file as HDF5 ({msg}); {_REGENERATE}"]


def _validate_open(f: h5py.File) -> list[str]:
    c = _Checker(f)

    # schema version first: a file of another version is judged by nothing else
    version = _attr_int(f, "schema_version")
    if "schema_version" not in f.attrs:
        return [f"no 'schema_version' attribute: not a pnndeploy profile; {_REGENERATE}"]
    if version is None:
        return [f"'schema_version' is not an integer; {_REGENERATE}"]
    if version > SCHEMA_VERSION:
        return [f"schema_version {version} was written by a newer pnndeploy "
                f"(this one reads {SCHEMA_VERSION}); upgrade pnndeploy"]
    if version < SCHEMA_VERSION:
        # there is no older released schema to migrate from: version 1 is the first
        return [f"schema_version {version} is older than {SCHEMA_VERSION}, the oldest this pnndeploy reads, "
                f"and no migration exists for it; write it again in schema {SCHEMA_VERSION} from the "
                f"chip's measurements (or {_REGENERATE} for a simulated chip)"]

    for name in ("device_id", "process", "created"):
        if _attr_str(f, name) is None:
            c.add(f"missing or non-text root attribute '{name}'")
    device_id = _attr_str(f, "device_id")
    if device_id is not None:
        try:
            check_device_name(device_id)
        except ProfileError as exc:
            # the id names the deployment file: a path here would write outside the deployments folder
            c.add(f"root attribute 'device_id' is not a valid name ({str(exc).split(';')[0]})")
    created = _attr_str(f, "created")
    if created is not None and _parse_time(created) is None:
        c.add(f"root attribute 'created' ({created!r}) is not an ISO-8601 time with a UTC offset")
    sim_attr = f.attrs.get("simulated")
    if sim_attr is None or not isinstance(sim_attr, (bool, np.bool_)):
        c.add("missing or non-boolean root attribute 'simulated'")
        simulated = None
    else:
        simulated = bool(sim_attr)

    platform: Platform | None = None
    platform_name = _attr_str(f, "platform")
    if platform_name is None:
        c.add("missing or non-text root attribute 'platform'")
    else:
        try:
            platform = get_platform(platform_name)
        except PnnError:
            from pnndeploy.platforms import PLATFORMS

            shown = platform_name if len(platform_name) <= 40 else platform_name[:40] + "..."
            c.add(f"platform {shown!r} is unknown to this pnndeploy (it knows {', '.join(sorted(PLATFORMS))}); "
                  "use a profile of the model's platform, or upgrade pnndeploy if the profile is newer")

    # layout
    shape: tuple[int, int] | None = None
    layout = c.group("layout")
    if layout is not None:
        rows, cols = _attr_int(layout, "rows"), _attr_int(layout, "cols")
        if rows is None or cols is None:
            c.add("'layout' needs integer attributes 'rows' and 'cols'")
        elif rows < 1 or cols < 1:
            c.add(f"'layout' rows={rows}, cols={cols}: both must be >= 1")
        else:
            shape = (rows, cols)

    # per-device fields
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
            measured = _attr_str(grp, "measured_at")
            if measured is None:
                c.add("'calibration' has no text attribute 'measured_at'")
            elif _parse_time(measured) is None:
                c.add(f"'calibration' measured_at ({measured!r}) is not an ISO-8601 time "
                      "with a UTC offset")
            temp = _attr_float(grp, "temperature_C")
            if temp is None or not math.isfinite(temp):
                c.add("'calibration' has no finite number attribute 'temperature_C'")
        if platform is None:
            continue
        ranges = param_ranges(platform)
        for name, units in _field_units(platform).items():
            data = c.dataset(grp, name, shape, "float", units)
            if name in ranges:
                c.in_range(f"{section}/{name}", data, ranges[name], units)

    # environment
    env = c.group("environment")
    if env is not None:
        eu = _environment_units(platform) if platform is not None else {}
        c.dataset(env, "drift_coefficient", shape, "float", eu.get("drift_coefficient"))
        xt = c.dataset(env, "crosstalk", (), "float", eu.get("crosstalk"))
        c.in_range("environment/crosstalk", xt, Range(0.0, 0.5, True, False))
        noise = c.dataset(env, "detector_noise", (), "float", eu.get("detector_noise"))
        c.in_range("environment/detector_noise", noise, Range(0.0, math.inf, True, False))
        bits = c.dataset(env, "dac_bits", (), "int", eu.get("dac_bits"))
        if bits is not None and bits.shape == () and not 1 <= int(bits) <= 32:
            c.add(f"'environment/dac_bits' is {int(bits)}, expected 1..32")
        hr = c.dataset(env, "heater_range", (2,), "float", eu.get("heater_range"))
        if hr is not None and hr.shape == (2,) and np.all(np.isfinite(hr)):
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
        age = c.dataset(env, "ageing_rate", (), "float", eu.get("ageing_rate"))
        c.in_range("environment/ageing_rate", age, Range(0.0, math.inf, True, False))

    return c.problems


# --------------------------------------------------------------------------- read


def read_profile(path: str | os.PathLike[str]) -> DeviceProfile:
    """Read a valid profile; ProfileError listing every problem otherwise."""
    path = Path(path)
    problems = validate_profile(path)
    if problems:
        text = "; ".join(problems)
        if not any(w in text for w in ("upgrade", "regenerate", "fleet make")):
            text += f"; fix these or {_REGENERATE}"
        raise ProfileError(f"profile {path}: {text}")
    try:
        with h5py.File(path, "r") as f:
            platform = get_platform(_attr_str(f, "platform") or "")
            fields = list(_field_units(platform))
            cal = f["calibration"]
            calibration = {k: np.asarray(cal[k][()], dtype=np.float64) for k in fields}
            fabrication = None
            if "fabrication" in f:
                fab = f["fabrication"]
                fabrication = {k: np.asarray(fab[k][()], dtype=np.float64) for k in fields}
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
            return DeviceProfile(
                device_id=_attr_str(f, "device_id") or "",
                platform=platform.name,
                process=_attr_str(f, "process") or "",
                created=_attr_str(f, "created") or "",
                shape=(int(f["layout"].attrs["rows"]), int(f["layout"].attrs["cols"])),
                calibration=calibration,
                calibration_measured_at=_attr_str(cal, "measured_at") or "",
                calibration_temperature_C=float(_attr_float(cal, "temperature_C")),
                environment=environment,
                fabrication=fabrication,
                schema_version=int(_attr_int(f, "schema_version")),
            )
    except (OSError, KeyError, ValueError, TypeError) as exc:  # file changed under us
        msg = " ".join(str(exc).split())
        raise ProfileError(f"profile {path}: cannot be read ({msg}); {_REGENERATE}") from None


# --------------------------------------------------------------------------- names and folders


def profiles_dir(option: str | os.PathLike[str] | None = None) -> Path:
    """The profiles folder: ``option`` (``--profiles``), else $PNNDEPLOY_PROFILES, else device_profiles."""
    if option:
        return Path(option)
    env = os.environ.get(PROFILES_ENV)
    if env:
        return Path(env)
    return Path(DEFAULT_PROFILES_DIR)


_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_NAME_MAX = 64


def check_device_name(name: str) -> str:
    """``name`` if it is a plain device name (not a path); ProfileError otherwise."""
    hint = ("use a device name such as 'chipA' (see `pnndeploy fleet list`) and pick the folder "
            "with --profiles")
    if not isinstance(name, str) or not name:
        raise ProfileError(f"device name is empty; {hint}")
    shown = name if len(name) <= 40 else name[:40] + "..."
    if len(name) > _NAME_MAX:
        raise ProfileError(f"device name {shown!r} is longer than {_NAME_MAX} characters; {hint}")
    if "/" in name or "\\" in name or ".." in name:
        raise ProfileError(f"device name {shown!r} looks like a path, not a name; {hint}")
    if name.startswith("."):
        raise ProfileError(f"device name {shown!r} starts with '.'; {hint}")
    if not _NAME_RE.fullmatch(name):
        raise ProfileError(f"device name {shown!r} has characters outside A-Z a-z 0-9 _ . -; {hint}")
    return name


def list_profiles(directory: str | os.PathLike[str]) -> list[Path]:
    """Sorted ``*.h5`` files of ``directory`` (hidden files skipped); ProfileError if it is no folder."""
    directory = Path(directory)
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise ProfileError(
            f"profiles folder {directory} {what}; pass --profiles DIR, set "
            f"{PROFILES_ENV}, or create one with `pnndeploy fleet make`")
    # hidden files are skipped: a writer killed mid-write may leave its temporary .NAME.h5.XXXX.tmp
    return sorted(p for p in directory.glob("*.h5") if p.is_file() and not p.name.startswith("."))


def resolve_device(name: str, directory: str | os.PathLike[str]) -> Path:
    """``<directory>/<name>.h5`` for a device name; ProfileError if the name is bad or absent."""
    check_device_name(name)
    directory = Path(directory)
    path = directory / f"{name}.h5"
    # exact names only, also on case-insensitive filesystems
    if path.is_file() and path.name in os.listdir(directory):
        return path
    if not directory.is_dir():
        what = "is a file, not a folder" if directory.exists() else "does not exist"
        raise ProfileError(
            f"no profile for device {name!r}: profiles folder {directory} {what}; "
            f"pass --profiles DIR or set {PROFILES_ENV}, or create a fleet with `pnndeploy fleet make`")
    known = [p.stem for p in list_profiles(directory)]
    extra = ""
    folded = [k for k in known if k.lower() == name.lower()]
    if name.endswith(".h5") and name[:-3] in known:
        extra = f"; did you mean {name[:-3]!r}? give the name without .h5"
    elif folded:
        extra = f"; did you mean {folded[0]!r}? names are case-sensitive"
    else:
        import difflib

        close = difflib.get_close_matches(name, known, n=1, cutoff=0.85)
        if close:
            extra = f"; the closest name is {close[0]!r}"
    if not known:
        have = "it holds no profiles"
    elif len(known) <= 8:
        have = f"it holds {', '.join(known)}"
    else:
        have = f"it holds {len(known)} profiles"
    raise ProfileError(
        f"no profile for device {name!r} in {directory} ({have}){extra}; see "
        f"`pnndeploy fleet list` or pass --profiles DIR")


# --------------------------------------------------------------------------- summary


def calibration_age_days(profile: DeviceProfile, now: datetime | None = None) -> float | None:
    """Days since the calibration was measured (None if the time cannot be parsed)."""
    measured = _parse_time(profile.calibration_measured_at)
    if measured is None:
        return None
    now = now or datetime.now(timezone.utc)
    return (now - measured).total_seconds() / 86400.0


def _stats(values: np.ndarray, units: str) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "max_abs": float(np.abs(v).max()),
            "units": units}


def profile_summary(profile: DeviceProfile, now: datetime | None = None) -> dict[str, Any]:
    """JSON-ready facts about a profile (for `pnndeploy profile show`)."""
    platform = get_platform(profile.platform)
    fields = _field_units(platform)
    env_units = _environment_units(platform)
    env = profile.environment
    out: dict[str, Any] = {
        "device_id": profile.device_id,
        "platform": profile.platform,
        "process": profile.process,
        "schema_version": int(profile.schema_version),
        "created": profile.created,
        "simulated": profile.simulated,
        "array": [int(profile.shape[0]), int(profile.shape[1])],
        "rings": profile.rings,
        "calibration": {
            "measured_at": profile.calibration_measured_at,
            "temperature_C": float(profile.calibration_temperature_C),
            "fields": {k: _stats(profile.calibration[k], u) for k, u in fields.items()},
        },
        "calibration_age_days": calibration_age_days(profile, now),
        "environment": {
            "crosstalk": float(env.crosstalk),
            "detector_noise": float(env.detector_noise),
            "dac_bits": int(env.dac_bits),
            "heater_range": [float(env.heater_range[0]), float(env.heater_range[1])],
            "ageing_rate": float(env.ageing_rate),
            "drift_coefficient": _stats(env.drift_coefficient, env_units["drift_coefficient"]),
        },
        "environment_units": {k: u for k, u in env_units.items() if k != "drift_coefficient"},
    }
    if profile.fabrication is not None:
        out["calibration_error"] = {
            k: _stats(np.asarray(profile.calibration[k]) - np.asarray(profile.fabrication[k]), u)
            for k, u in fields.items()
        }
    return out


__all__ = [
    "SCHEMA_VERSION", "PARAM_RANGES", "Range", "Environment", "DeviceProfile",
    "param_ranges", "write_profile", "validate_profile", "read_profile", "profiles_dir",
    "check_device_name", "resolve_device", "list_profiles", "calibration_age_days",
    "profile_summary",
]
