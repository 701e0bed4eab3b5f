"""A lab's own calibration files into a profile: `pnndeploy profile import`.

Two kinds of table, as CSV with a header or as NPZ (one 1-D numeric array per column):

* **fitted parameters**: ``row, col, <field>_<unit>`` for every calibrated field of the platform
  (a ring: ``resonance_offset_nm, gamma_nm, a_1``), one line per device;
* **sweeps**: ``row, col, setting_<unit>, measured_<unit>``, every device swept over the same settings,
  fitted by :func:`~pnndeploy.deploy.calibration.fit_sweep`, the fit `calibrate` uses.

A file comes from someone else (DESIGN.md, "Trust boundaries"): it is read once, bounded
(:data:`MAX_CSV_BYTES`; an NPZ at most the HDF5 dataset limit, 64 MiB, as a file and as the arrays it declares once
inflated), never unpickled, and every problem is one
:class:`PnnError` naming the file, the line (CSV) or entry (NPZ) and the fix, before anything is written.
"""

from __future__ import annotations

import array
import csv
import hashlib
import io
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from pnndeploy.compute import CPU, Compute
from pnndeploy.deploy.calibration import (DEFAULT_MAX_FAULTY, DEFAULT_MAX_RESIDUAL, MAX_POINTS, MIN_POINTS,
                                          CalibrationResult, check_fit, error_vs_truth, faulty_doc, fit_sweep)
from pnndeploy.errors import PnnError
from pnndeploy.formats.hdf5 import MAX_DATASET_BYTES
from pnndeploy.formats.profile_schema import field_units, param_ranges
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import Platform, get_platform
from pnndeploy.untrusted import FileProblem, brief, read_bounded, size_text

#: Largest CSV read (its parsed numbers take 8 bytes each, so memory stays within a few times this).
MAX_CSV_BYTES = 16 << 20
#: Units a column may give, as (dimension, factor to the first unit of that dimension).
UNITS = {"nm": ("length", 1.0), "pm": ("length", 1e-3), "rad": ("angle", 1.0), "mrad": ("angle", 1e-3),
         "1": ("ratio", 1.0)}
FORMAT_HINT = "see README 'pnndeploy profile import' and examples/calibration/"


@dataclass
class Table:
    """A read file: column names, an (entries, columns) float64 array, where each entry came from."""

    name: str                  # the file as messages show it
    sha256: str
    columns: list[str]
    values: np.ndarray
    lines: np.ndarray | None   # CSV: the line of each entry; NPZ: None (entries are array indices)

    def at(self, i: int) -> str:
        """Where entry ``i`` is, for a message."""
        return f"line {int(self.lines[i])}" if self.lines is not None else f"entry {i}"

    def fail(self, text: str) -> PnnError:
        return PnnError(f"{self.name}: {text}")


#: Checks a file's column names (name as shown, columns) before any value is parsed (raises PnnError), and
#: returns the most entries a good file with them can hold (None: no limit).
HeaderCheck = Callable[[str, list[str]], "int | None"]


def read_table(path: str | Path, check: HeaderCheck | None = None) -> Table:
    """Read a CSV or NPZ file (told apart by content), bounded and checked: every cell a finite number.

    ``check`` sees the column names first, so a file of unknown columns costs no parsing."""
    name = brief(str(path), 100, quote=False, tail=True)
    try:
        data = read_bounded(path, MAX_DATASET_BYTES)
    except FileProblem as exc:
        raise PnnError(f"{name} {exc.text}; give a CSV or NPZ calibration file ({FORMAT_HINT})") from None
    except OSError as exc:
        raise PnnError(f"cannot read {name}: {exc.strerror or exc}; check the path") from None
    digest = hashlib.sha256(data).hexdigest()
    if data[:4] == b"PK\x03\x04":
        columns, values = _npz_columns(data, name, check)
        table = Table(name, digest, columns, values, None)
    else:
        if len(data) > MAX_CSV_BYTES:
            raise PnnError(f"{name} is {size_text(len(data))}, more than the {size_text(MAX_CSV_BYTES)} a CSV "
                           "calibration file may hold; split it or save it as NPZ")
        table = _csv_table(data, name, digest, check)
    if len(table.values) == 0:
        raise table.fail(f"holds a header but no devices; give one line per device ({FORMAT_HINT})")
    return table


def _text_lines(data: bytes, name: str) -> Iterator[str]:
    """The file's lines as text, decoded one at a time (no second copy of the whole file)."""
    for number, raw in enumerate(io.BytesIO(data), start=1):
        try:
            yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise PnnError(f"{name}: line {number}, byte {exc.start} is not UTF-8 text; save the file as UTF-8 CSV, "
                           "or as NPZ") from None


def _csv_table(data: bytes, name: str, digest: str, check: HeaderCheck | None) -> Table:
    """Parse CSV with a header: every line as many cells as the header, every cell a finite number; stops one line
    past what ``check`` says a good file holds (enough to name the problem, a repeated device)."""
    reader = csv.reader(_text_lines(data, name))
    header: list[str] | None = None
    max_entries: int | None = None
    values, lines = array.array("d"), array.array("q")
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                max_entries = check(name, header) if check is not None else None
                continue
            if len(row) != len(header):
                raise PnnError(f"{name}: line {reader.line_num} has {len(row)} cells where the header names "
                               f"{len(header)} (a truncated or ragged file?); give every line one value per column")
            try:
                values.extend([float(cell) for cell in row])
            except ValueError:
                for column, cell in zip(header, row):
                    _number(cell, f"{name}: line {reader.line_num}, column {brief(column)}")
            lines.append(reader.line_num)
            if max_entries is not None and len(lines) > max_entries:
                break
    except csv.Error as exc:
        raise PnnError(f"{name}: line {reader.line_num} is not CSV ({brief(str(exc), quote=False)}); "
                       f"save it as comma-separated text with a header ({FORMAT_HINT})") from None
    if header is None:
        raise PnnError(f"{name} is empty; give a header line and one line per device ({FORMAT_HINT})")
    table = np.frombuffer(values, dtype=np.float64).reshape(-1, len(header))
    bad = np.argwhere(~np.isfinite(table))
    if bad.size:
        i, j = (int(v) for v in bad[0])
        raise PnnError(f"{name}: line {lines[i]}, column {brief(header[j])}: {table[i, j]} is not a finite number; "
                       "remeasure that device or fill in its value")
    return Table(name, digest, header, table, np.frombuffer(lines, dtype=np.int64))


def _number(cell: str, where: str) -> float:
    """One cell as a finite float; a one-line error naming ``where`` otherwise."""
    try:
        value = float(cell)
    except ValueError:
        raise PnnError(f"{where}: {brief(cell.strip())} is not a number; write a plain decimal number") from None
    if not np.isfinite(value):
        raise PnnError(f"{where}: {brief(cell.strip())} is not a finite number; remeasure that device or fill "
                       "in its value")
    return value


def _npz_columns(data: bytes, name: str, check: HeaderCheck | None) -> tuple[list[str], np.ndarray]:
    """The members of an NPZ archive as columns: 1-D arrays of one length and a plain numeric dtype, no pickles."""
    fix = "save it with numpy.savez(path, row=..., col=..., ...) from 1-D numeric arrays"
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        declared = sum(info.file_size for info in archive.zip.infolist())
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise PnnError(f"{name} is not a readable NPZ archive ({brief(str(exc), quote=False)}); {fix}") from None
    if declared > MAX_DATASET_BYTES:
        raise PnnError(f"{name} declares {size_text(declared)} of arrays once inflated, more than the "
                       f"{size_text(MAX_DATASET_BYTES)} a calibration file may hold; split it")
    columns, arrays = [], []
    with archive:
        if check is not None:
            check(name, list(archive.files))
        for key in archive.files:
            where = f"{name}: member {brief(key)}"
            try:
                arr = archive[key]
            except ValueError:
                raise PnnError(f"{where} holds Python objects (a pickle), which are never loaded; {fix}") from None
            except (OSError, EOFError, zipfile.BadZipFile) as exc:
                raise PnnError(f"{where} cannot be read ({brief(str(exc), quote=False)}); {fix}") from None
            if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "iuf" or arr.ndim != 1:
                what = f"dtype {arr.dtype}, shape {arr.shape}" if isinstance(arr, np.ndarray) else "not an array"
                raise PnnError(f"{where} is {what}, not a 1-D array of numbers; {fix}")
            if arr.size * 8 * len(archive.files) > MAX_DATASET_BYTES:      # as float64, all columns together
                raise PnnError(f"{where} has {arr.size} entries, more than a {size_text(MAX_DATASET_BYTES)} table "
                               "of numbers holds; split the file")
            if arrays and len(arr) != len(arrays[0]):
                raise PnnError(f"{where} has {len(arr)} entries, member {brief(columns[0])} {len(arrays[0])}; "
                               "give every column one entry per line of the table")
            values = arr.astype(np.float64)
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                raise PnnError(f"{where}: entry {int(bad[0])} is {arr[bad[0]]}, not a finite number; remeasure that "
                               "device or fill in its value")
            columns.append(key)
            arrays.append(values)
    if not arrays:
        raise PnnError(f"{name} holds no arrays; {fix}")
    return columns, np.stack(arrays, axis=1)


# ------------------------------------------------------------------------------------------- header and units


def unit_factor(given: str, expected: str) -> float | None:
    """What multiplies a value in ``given`` units into ``expected`` ones (None: not convertible here)."""
    if given == expected:
        return 1.0
    if given in UNITS and expected in UNITS and UNITS[given][0] == UNITS[expected][0]:
        return UNITS[given][1] / UNITS[expected][1]
    return None


def _split(column: str, names: list[str]) -> tuple[str, str] | None:
    """``<name>_<unit>`` as (name, unit) for the longest matching name; None when no name matches."""
    for name in sorted(names, key=len, reverse=True):
        if column.startswith(name + "_") and len(column) > len(name) + 1:
            return name, column[len(name) + 1:]
    return None


#: Columns a parameter file may give beside the calibrated fields: the lab's own flag of devices that do not
#: respond to their setting (1) or do (0); see :mod:`pnndeploy.platforms.faults`.
OPTIONAL_PARAMETERS = {"faulty": "1"}


def parse_header(table: Table, wanted: dict[str, str],
                 optional: tuple[str, ...] = ()) -> dict[str, tuple[int, float]]:
    """Column index and unit factor of each name in ``wanted`` ({name: expected unit}), plus 'row' and 'col';
    an unknown, unitless, repeated or missing column, or a unit that does not convert, is refused; the names in
    ``optional`` may be missing."""
    found: dict[str, tuple[int, float]] = {}
    expected = ", ".join(["row", "col"] + [f"{k}_{u}" for k, u in wanted.items()])
    for i, column in enumerate(table.columns):
        if column in ("row", "col"):
            name, factor = column, 1.0
        elif column in wanted:
            raise table.fail(f"column {brief(column)} has no unit; write it as {column}_{wanted[column]}")
        else:
            parts = _split(column, list(wanted))
            if parts is None:
                raise table.fail(f"column {brief(column)} is not one of {expected}; rename or remove it")
            name, unit = parts
            factor = unit_factor(unit, wanted[name])
            if factor is None:
                raise table.fail(f"column {brief(column)}: unit {brief(unit)} for {name}, expected {wanted[name]} "
                                 f"(convertible: {', '.join(UNITS)}); convert the column to {wanted[name]}")
        if name in found:
            raise table.fail(f"column {brief(column)} repeats {name}; keep one column per quantity")
        found[name] = (i, factor)
    missing = [k for k in ["row", "col", *wanted] if k not in found and k not in optional]
    if missing:
        raise table.fail(f"has no column for {', '.join(missing)}; the header must name {expected}")
    return found


def device_index(table: Table, columns: dict[str, tuple[int, float]], shape: tuple[int, int]) -> np.ndarray:
    """Row-major device index of each entry; a row/col not an integer inside the array is refused."""
    rows, cols = int(shape[0]), int(shape[1])
    index = []
    for name, size in (("row", rows), ("col", cols)):
        v = table.values[:, columns[name][0]]
        bad = np.flatnonzero((v != np.round(v)) | (v < 0) | (v >= size))
        if bad.size:
            i = int(bad[0])
            raise table.fail(f"{table.at(i)}: {name} {v[i]:g} is outside the {rows} x {cols} array ({name}s "
                             f"0..{size - 1}); is this the right chip's file?")
        index.append(v.astype(np.int64))
    return index[0] * cols + index[1]


def _missing_device(table: Table, index: np.ndarray, shape: tuple[int, int], per: str) -> None:
    """Refuse a table that leaves a device of the array out."""
    present = np.zeros(int(np.prod(shape)), dtype=bool)
    present[index] = True
    if not present.all():
        r, c = np.unravel_index(int(np.argmin(present)), shape)
        raise table.fail(f"device (row {r}, col {c}) is missing ({int((~present).sum())} of {present.size} devices "
                         f"absent); every device of the {shape[0]} x {shape[1]} array needs {per}")


# ---------------------------------------------------------------------------------------------- the two kinds


def _is_sweep(columns: list[str]) -> bool:
    return any(c.startswith(("setting_", "measured_")) for c in columns)


def _wanted(platform: Platform, columns: list[str], name: str) -> dict[str, str]:
    """The quantities (name: unit) a file with these columns must give: sweeps or fitted parameters."""
    if not _is_sweep(columns):
        return {**field_units(platform), **(OPTIONAL_PARAMETERS if platform.faults_supported else {})}
    if not platform.sweep_calibration:
        raise PnnError(f"{name}: holds sweeps, but {platform.name} devices cannot be fitted from sweeps here; give "
                       f"fitted parameters ({', '.join(field_units(platform))}) instead")
    return {"setting": platform.control_units, "measured": "1"}


def parameter_fields(table: Table, profile: DeviceProfile, platform: Platform) -> tuple[dict[str, np.ndarray],
                                                                                       np.ndarray]:
    """Fitted parameters, one entry per device: the fields (array shape) and each device's entry."""
    units = field_units(platform)
    columns = parse_header(table, _wanted(platform, table.columns, table.name), tuple(OPTIONAL_PARAMETERS))
    index = device_index(table, columns, profile.shape)
    order = np.argsort(index, kind="stable")
    twice = np.flatnonzero(np.diff(index[order]) == 0)
    if twice.size:
        first, second = int(order[twice[0]]), int(order[twice[0] + 1])
        r, c = np.unravel_index(int(index[first]), profile.shape)
        raise table.fail(f"{table.at(first)} and {table.at(second)} both give device (row {r}, col {c}); "
                         "keep one line per device")
    _missing_device(table, index, profile.shape, "one line")
    devices = int(np.prod(profile.shape))
    fields = {}
    for name in units:
        i, factor = columns[name]
        flat = np.empty(devices)
        flat[index] = table.values[:, i] * factor if factor != 1.0 else table.values[:, i]
        fields[name] = flat.reshape(profile.shape)
    if "faulty" in columns:
        flags = table.values[:, columns["faulty"][0]]
        bad = np.flatnonzero((flags != 0) & (flags != 1))
        if bad.size:
            raise table.fail(f"{table.at(int(bad[0]))}: faulty must be 0 (responds) or 1 (does not respond), got "
                             f"{flags[bad[0]]:g}")
        flat = np.empty(devices, dtype=np.uint8)
        flat[index] = flags.astype(np.uint8)
        fields["faulty"] = flat.reshape(profile.shape)
    entry = np.empty(devices, dtype=np.int64)
    entry[index] = np.arange(len(index))
    return fields, entry


def sweep_fields(table: Table, profile: DeviceProfile, platform: Platform,
                 compute: Compute = CPU) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Per-device sweeps, every device over the same settings, fitted as `calibrate` fits: (fields, residual,
    settings)."""
    columns = parse_header(table, {"setting": platform.control_units, "measured": "1"})
    index = device_index(table, columns, profile.shape)
    _missing_device(table, index, profile.shape, "a sweep")
    setting = table.values[:, columns["setting"][0]] * columns["setting"][1]
    measured = table.values[:, columns["measured"][0]]
    order = np.lexsort((setting, index))
    same = np.flatnonzero((np.diff(index[order]) == 0) & (np.diff(setting[order]) == 0))
    if same.size:
        first, second = int(order[same[0]]), int(order[same[0] + 1])
        raise table.fail(f"{table.at(first)} and {table.at(second)} both give device {_rc(index[first], profile)} at "
                         f"setting {setting[first]:g}; keep one measurement per setting")
    counts = np.bincount(index, minlength=int(np.prod(profile.shape)))
    odd = np.flatnonzero(counts != counts[0])
    if odd.size:
        raise table.fail(f"device {_rc(odd[0], profile)} has {counts[odd[0]]} sweep points, device (row 0, col 0) "
                         f"{counts[0]}; sweep every device over the same settings")
    if not MIN_POINTS <= counts[0] <= MAX_POINTS:
        raise table.fail(f"each device has {counts[0]} sweep points; a transfer-function fit needs {MIN_POINTS} "
                         f"to {MAX_POINTS} (as `calibrate --points`)")
    settings = setting[order].reshape(len(counts), -1)
    other = np.flatnonzero(np.any(settings != settings[0], axis=1))
    if other.size:
        d = int(other[0])
        k = int(np.argmax(settings[d] != settings[0]))
        raise table.fail(f"{table.at(int(order[d * counts[0] + k]))}: device {_rc(d, profile)} is swept at setting "
                         f"{settings[d, k]:g} where device (row 0, col 0) is at {settings[0, k]:g}; sweep every "
                         "device over the same settings")
    fields, residual = fit_sweep(profile, settings[0], measured[order].reshape(settings.shape), compute)
    return fields, residual, settings[0]


def _rc(flat: int, profile: DeviceProfile) -> str:
    r, c = np.unravel_index(int(flat), profile.shape)
    return f"(row {r}, col {c})"


def check_ranges(table: Table, fields: dict[str, np.ndarray], platform: Platform, profile: DeviceProfile,
                 entry: np.ndarray | None) -> None:
    """Refuse a parameter outside the platform's physical range (a ring's a > 1), naming the first device."""
    units = field_units(platform)
    for name, allowed in param_ranges(platform).items():
        bad = np.flatnonzero(~allowed.contains(fields[name].ravel()))
        if bad.size:
            d = int(bad[0])
            unit = "" if units[name] == "1" else f" {units[name]}"
            where = f"{table.at(int(entry[d]))}, " if entry is not None else "the fit of "
            raise table.fail(f"{where}device {_rc(d, profile)}: {name} = {fields[name].ravel()[d]:g}{unit} is "
                             f"outside {allowed.describe()}, implausible for a {platform.name} device "
                             f"({bad.size} device(s)); check that device's measurement and the column's unit")


def supported_problem(platform: Platform, shape: tuple[int, int]) -> str | None:
    """Why a profile of ``platform`` cannot be imported (a field not one value per device), else None."""
    odd = [name for name in field_units(platform) if tuple(platform.field_shape(name, shape)) != tuple(shape)]
    if odd or tuple(platform.device_shape(shape)) != tuple(shape):
        return (f"profile import reads one line per device of the array, but {platform.name} calibrations hold "
                f"{', '.join(odd) or 'devices'} in another shape; it supports platforms with one value per device "
                f"and field ({', '.join(importable_platforms())})")
    return None


def importable_platforms(shape: tuple[int, int] = (4, 4)) -> list[str]:
    """The platforms whose calibrations hold one value per device and field (what a table can give)."""
    from pnndeploy.platforms import PLATFORMS

    def per_device(p: Platform) -> bool:
        return all(tuple(p.field_shape(n, shape)) == shape for n in field_units(p)) and \
            tuple(p.device_shape(shape)) == shape

    return [name for name, p in PLATFORMS.items() if per_device(p)]


def import_calibration(profile: DeviceProfile, path: str | Path, max_residual: float = DEFAULT_MAX_RESIDUAL,
                       temperature: float | None = None, compute: Compute = CPU,
                       max_faulty: float = DEFAULT_MAX_FAULTY) -> tuple[CalibrationResult, Table, str]:
    """The calibration a lab's file gives ``profile`` (nothing written): (result, table, kind)."""
    platform = get_platform(profile.platform)
    problem = supported_problem(platform, tuple(profile.shape))
    if problem:
        raise PnnError(f"{profile.device_id}: {problem}")
    def check(name: str, columns: list[str]) -> int:
        parse_header(Table(name, "", columns, np.zeros((0, len(columns))), None), _wanted(platform, columns, name),
                     tuple(OPTIONAL_PARAMETERS))
        return profile.devices * (MAX_POINTS if _is_sweep(columns) else 1)

    table = read_table(path, check)
    entry = None
    if _is_sweep(table.columns):
        kind = "sweeps"
        fields, residual, controls = sweep_fields(table, profile, platform, compute)
    else:
        kind = "parameters"
        fields, entry = parameter_fields(table, profile, platform)
        residual, controls = np.zeros(profile.shape), np.zeros(0)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    source = f"imported from {brief(Path(path).name, 100, quote=False, tail=True)} sha256 {table.sha256} at {now}"
    result = CalibrationResult(profile.device_id, fields, residual, controls,
                               float(profile.calibration_temperature_C if temperature is None else temperature),
                               "profile (the file records none)" if temperature is None else "--temperature",
                               now, source=source)
    try:                      # a file flagging most devices is a failed measurement whichever kind it holds
        check_fit(result, max_residual if kind == "sweeps" else np.inf, max_faulty)
    except PnnError as exc:
        raise table.fail(str(exc)) from None
    check_ranges(table, fields, platform, profile, entry)
    result.error_vs_truth = error_vs_truth(profile, fields)
    return result, table, kind


def import_doc(result: CalibrationResult, table: Table, kind: str, units: dict[str, str], written: str | None) -> dict:
    """The `profile import --json` document."""
    return {
        "device": result.device_id, "file": table.name, "sha256": table.sha256, "kind": kind,
        "entries": int(len(table.values)), "measured_at": result.measured_at, "temperature_C": result.temperature_C,
        "temperature_source": result.temperature_source, "source": result.source,
        "fields": {k: {"mean": float(v.mean()), "std": float(v.std()), "units": units.get(k, "")}
                   for k, v in result.fields.items() if k != "faulty"},
        "faulty": faulty_doc(result.fields),
        "residual": None if kind != "sweeps" else {"rms_mean": float(result.residual.mean()),
                                                   "rms_max": float(result.residual.max()), "units": "1"},
        "error_vs_truth": result.error_vs_truth,
        "written": written,
    }


def parameters_csv(profile: DeviceProfile) -> str:
    """``profile``'s calibration as a fitted-parameters CSV that :func:`import_calibration` reads back exactly
    (every float written in full: ``repr``), the file format's reference."""
    units = field_units(get_platform(profile.platform))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["row", "col", *(f"{k}_{u}" for k, u in units.items())])
    for r, c in np.ndindex(*profile.shape):
        writer.writerow([r, c, *(repr(float(profile.calibration[k][r, c])) for k in units)])
    return out.getvalue()
