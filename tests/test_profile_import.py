"""`pnndeploy profile import`: a lab's CSV/NPZ of fitted parameters or sweeps into a profile's calibration.

A round trip through the exported parameters reproduces the calibration exactly; sweeps of a chip's truth are
fitted exactly as `calibrate` fits them; every bad file is one line, exit 2, and the profile byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from pnndeploy.deploy.calibration import fit_sweep, sweep_controls
from pnndeploy.deploy.calibration_import import parameters_csv
from pnndeploy.formats.profiles import read_profile
from pnndeploy.platforms import get_platform

POINTS = 128          # sweep points per device: a step below the rings' half-width


@pytest.fixture
def folder(tmp_path, tiny_fleet_dir) -> Path:
    """A private copy of the tiny fleet (16 x 16 simulated rings)."""
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    return mine


@pytest.fixture
def params_text(folder) -> str:
    return parameters_csv(read_profile(folder / "chipA.h5"))


def _sweeps(profile, points: int = POINTS, noise: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(settings, measured (devices, points)): what a lab's sweep of the chip's truth would hold."""
    platform = get_platform(profile.platform)
    controls = sweep_controls(profile, points) if points >= 16 else np.linspace(-3.0, 3.0, points)
    rows, cols = (g.ravel() for g in np.indices(profile.shape))
    measured = platform.device_response(profile.fabrication, profile.environment.drift_coefficient, rows, cols,
                                        controls, 0.0)
    measured = measured + np.random.default_rng(0).normal(0.0, noise, measured.shape) if noise else measured
    return controls, measured


def _sweep_csv(profile, controls, measured, setting_unit: str = "nm", scale: float = 1.0) -> str:
    lines = [f"row,col,setting_{setting_unit},measured_1"]
    for d, (r, c) in enumerate(np.ndindex(*profile.shape)):
        lines += [f"{r},{c},{x * scale!r},{w!r}" for x, w in zip(controls.tolist(), measured[d].tolist())]
    return "\n".join(lines) + "\n"


def test_exported_parameters_import_to_the_same_calibration_and_keep_the_old_one(cli, folder, params_text, tmp_path):
    before = read_profile(folder / "chipA.h5")
    source = tmp_path / "lab.csv"
    source.write_text(params_text)
    result = cli("profile", "import", "chipA", source, "--profiles", folder, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    after = read_profile(folder / "chipA.h5")
    for name, value in before.calibration.items():
        np.testing.assert_array_equal(after.calibration[name], value)
    assert doc["kind"] == "parameters" and doc["written"] == str(folder / "chipA.h5")
    assert f"lab.csv sha256 {doc['sha256']}" in after.calibration_source
    assert after.calibration_measured_at == doc["measured_at"] != before.calibration_measured_at
    assert len(after.calibration_history) == len(before.calibration_history) + 1
    assert after.calibration_history[-1].measured_at == before.calibration_measured_at
    again = cli("profile", "import", "chipA", source, "--profiles", folder, "--temperature", "24.5")
    assert again.exit_code == 0, again.output
    twice = read_profile(folder / "chipA.h5")
    assert len(twice.calibration_history) == len(before.calibration_history) + 2
    assert twice.calibration_history[-1].source == after.calibration_source
    assert twice.calibration_temperature_C == 24.5
    shown = json.loads(cli("profile", "show", "chipA", "--profiles", folder, "--json").stdout)
    assert shown["calibration"]["source"] == twice.calibration_source


def test_a_column_in_pm_is_converted_to_nm(cli, folder, params_text, tmp_path):
    before = read_profile(folder / "chipA.h5")
    header, *rows = params_text.splitlines()
    rows = [",".join([*cells[:3], repr(float(cells[3]) * 1000), cells[4]]) for cells in (r.split(",") for r in rows)]
    source = tmp_path / "pm.csv"
    source.write_text("\n".join([header.replace("gamma_nm", "gamma_pm"), *rows]) + "\n")
    result = cli("profile", "import", "chipA", source, "--profiles", folder, "--out", tmp_path / "new.h5")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read_profile(tmp_path / "new.h5").calibration["gamma"], before.calibration["gamma"],
                               rtol=1e-14)


@pytest.mark.parametrize("form", ["csv", "npz"])
def test_sweeps_are_fitted_as_calibrate_fits_them(cli, folder, tmp_path, form):
    profile = read_profile(folder / "chipB.h5")
    controls, measured = _sweeps(profile)
    source = tmp_path / f"sweeps.{form}"
    if form == "csv":
        source.write_text(_sweep_csv(profile, controls, measured))
    else:
        rows, cols = (np.repeat(g.ravel(), len(controls)) for g in np.indices(profile.shape))
        np.savez(source, row=rows, col=cols, setting_nm=np.tile(controls, profile.devices),
                 measured_1=measured.ravel())
    result = cli("profile", "import", "chipB", source, "--profiles", folder, "--out", tmp_path / "new.h5", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "sweeps"
    got = read_profile(tmp_path / "new.h5").calibration
    fitted, _ = fit_sweep(profile, controls, measured)          # calibrate's fit of the same data
    for name, value in fitted.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(got[name], profile.fabrication[name], atol=1e-6)


# --------------------------------------------------------------------------------------------------- bad files

def _edit(text: str, line: int, column: int, value: str) -> str:
    """``text`` with cell ``column`` of line ``line`` (1 = the header) replaced by ``value``."""
    lines = text.splitlines()
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    return "\n".join(lines) + "\n"


def _drop(text: str, line: int) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:line - 1] + lines[line:]) + "\n"


CSV_CASES = {
    "nan": (lambda t: _edit(t, 5, 3, "nan"), ["line 5", "gamma_nm", "not a finite number"]),
    "inf": (lambda t: _edit(t, 7, 2, "-inf"), ["line 7", "not a finite number"]),
    "missing device": (lambda t: _drop(t, 20), ["device (row 1, col 2) is missing", "1 of 256"]),
    "duplicate": (lambda t: t + t.splitlines()[3] + "\n", ["line 4 and line 258 both give device (row 0, col 2)"]),
    "wrong unit": (lambda t: t.replace("gamma_nm", "gamma_s", 1), ["unit 's' for gamma, expected nm", "convert"]),
    "no unit": (lambda t: t.replace("gamma_nm", "gamma", 1), ["'gamma' has no unit", "gamma_nm"]),
    "unknown column": (lambda t: "\n".join(l + ",1" for l in t.replace("a_1\n", "a_1,\n", 1).splitlines()
                                           ).replace("a_1,,1", "a_1,temp_K", 1),
                       ["column 'temp_K' is not one of row, col, resonance_offset_nm, gamma_nm, a_1"]),
    "missing column": (lambda t: "\n".join(l.rsplit(",", 1)[0] for l in t.splitlines()), ["no column for a"]),
    "repeated column": (lambda t: t.replace("gamma_nm", "a_1", 1), ["repeats a"]),
    "row out of the array": (lambda t: _edit(t, 9, 0, "16"), ["line 9", "row 16 is outside the 16 x 16 array"]),
    "negative col": (lambda t: _edit(t, 9, 1, "-1"), ["line 9", "col -1 is outside"]),
    "fractional row": (lambda t: _edit(t, 9, 0, "0.5"), ["line 9", "row 0.5"]),
    "non-numeric": (lambda t: _edit(t, 11, 4, "abc"), ["line 11", "'a_1'", "'abc' is not a number"]),
    "a above 1": (lambda t: _edit(t, 13, 4, "1.2"), ["line 13", "device (row 0, col 11)", "a = 1.2", "(0, 1]"]),
    "gamma not positive": (lambda t: _edit(t, 13, 3, "-0.1"), ["line 13", "gamma = -0.1", "(0, inf)"]),
    "ragged line": (lambda t: _edit(t, 30, 4, "0.9,1"), ["line 30 has 6 cells where the header names 5"]),
    "truncated": (lambda t: t[: len(t) // 2 + 7], ["cells where the header names 5"]),
    "truncated at a line end": (lambda t: t[: t.index("\n", len(t) // 2) + 1], ["is missing"]),
    "header only": (lambda t: t.splitlines()[0] + "\n", ["no devices"]),
    "empty": (lambda t: "", ["is empty"]),
    "not utf-8": (lambda t: t.replace("0,0,", "0,\udcff,", 1), ["not UTF-8"]),
    "terminal escape in a column": (lambda t: t.replace("a_1", "a_1\x1b[2J", 1), ["\\x1b"]),
    "unterminated quote": (lambda t: t + '"1,2', ["line"]),
}


@pytest.mark.parametrize("case", list(CSV_CASES))
def test_a_bad_csv_is_one_line_and_writes_nothing(cli, one_line_error, folder, params_text, tmp_path, case):
    edit, fragments = CSV_CASES[case]
    source = tmp_path / "lab.csv"
    source.write_bytes(edit(params_text).encode("utf-8", "surrogateescape"))
    original = (folder / "chipA.h5").read_bytes()
    line = one_line_error(cli("profile", "import", "chipA", source, "--profiles", folder), *fragments)
    assert "lab.csv" in line
    assert (folder / "chipA.h5").read_bytes() == original
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))


def _npz_columns(profile) -> dict[str, np.ndarray]:
    rows, cols = (g.ravel() for g in np.indices(profile.shape))
    return {"row": rows, "col": cols, **{f"{k}_{u}": profile.calibration[k].ravel()
                                          for k, u in (("resonance_offset", "nm"), ("gamma", "nm"), ("a", "1"))}}


NPZ_CASES = {
    "pickled object array": (lambda c: {**c, "a_1": c["a_1"].astype(object)}, ["member 'a_1'", "pickle"]),
    "text array": (lambda c: {**c, "a_1": c["a_1"].astype(str)}, ["member 'a_1'", "not a 1-D array of numbers"]),
    "2-D member": (lambda c: {**c, "a_1": c["a_1"].reshape(16, 16)}, ["shape (16, 16)"]),
    "short member": (lambda c: {**c, "a_1": c["a_1"][:-1]}, ["255 entries"]),
    "nan": (lambda c: {**c, "gamma_nm": np.where(np.arange(256) == 7, np.nan, c["gamma_nm"])},
            ["member 'gamma_nm': entry 7", "not a finite number"]),
    "a above 1": (lambda c: {**c, "a_1": np.where(np.arange(256) == 3, 1.5, c["a_1"])}, ["entry 3", "a = 1.5"]),
}


@pytest.mark.parametrize("case", list(NPZ_CASES))
def test_a_bad_npz_is_one_line_and_writes_nothing(cli, one_line_error, folder, tmp_path, case):
    edit, fragments = NPZ_CASES[case]
    source = tmp_path / "lab.npz"
    np.savez(source, **edit(_npz_columns(read_profile(folder / "chipA.h5"))))
    original = (folder / "chipA.h5").read_bytes()
    one_line_error(cli("profile", "import", "chipA", source, "--profiles", folder), "lab.npz", *fragments)
    assert (folder / "chipA.h5").read_bytes() == original


def test_a_good_npz_of_parameters_imports(cli, folder, tmp_path):
    before = read_profile(folder / "chipA.h5")
    np.savez(tmp_path / "lab.npz", **_npz_columns(before))
    assert cli("profile", "import", "chipA", tmp_path / "lab.npz", "--profiles", folder).exit_code == 0
    for name, value in before.calibration.items():
        np.testing.assert_array_equal(read_profile(folder / "chipA.h5").calibration[name], value)


@pytest.mark.parametrize("size, fragment", [(17 << 20, "more than the 16 MiB a CSV"), (65 << 20, "more than the 64 MiB")])
def test_a_huge_file_is_refused_unread(cli, one_line_error, folder, tmp_path, size, fragment):
    source = tmp_path / "huge.csv"
    with open(source, "wb") as fh:
        fh.truncate(size)                                        # sparse: costs no disk
    original = (folder / "chipA.h5").read_bytes()
    one_line_error(cli("profile", "import", "chipA", source, "--profiles", folder), "huge.csv", fragment)
    assert (folder / "chipA.h5").read_bytes() == original


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
def test_a_fifo_is_refused_without_blocking(cli, one_line_error, folder, tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    one_line_error(cli("profile", "import", "chipA", tmp_path / "pipe.csv", "--profiles", folder), "FIFO")


SWEEP_CASES = {
    "noisy fit": (dict(noise=0.01), ["--max-residual", "1e-06"], ["fit badly", "nothing was written"]),
    "too few points": (dict(points=8), [], ["8 sweep points", "needs 16 to 65536"]),
    "setting unit": (dict(unit="rad"), [], ["unit 'rad' for setting, expected nm"]),
}


@pytest.mark.parametrize("case", list(SWEEP_CASES))
def test_a_bad_sweep_file_is_one_line_and_writes_nothing(cli, one_line_error, folder, tmp_path, case):
    opts, flags, fragments = SWEEP_CASES[case]
    profile = read_profile(folder / "chipB.h5")
    controls, measured = _sweeps(profile, opts.get("points", 64), opts.get("noise", 0.0))
    source = tmp_path / "sweeps.csv"
    source.write_text(_sweep_csv(profile, controls, measured, opts.get("unit", "nm")))
    original = (folder / "chipB.h5").read_bytes()
    one_line_error(cli("profile", "import", "chipB", source, "--profiles", folder, *flags), "sweeps.csv", *fragments)
    assert (folder / "chipB.h5").read_bytes() == original


def test_sweeps_at_other_settings_per_device_are_refused(cli, one_line_error, folder, tmp_path):
    profile = read_profile(folder / "chipB.h5")
    controls, measured = _sweeps(profile, 64)
    text = _sweep_csv(profile, controls, measured).splitlines()
    text[70] = text[70].replace(text[70].split(",")[2], "0.123", 1)          # device (0, 1)
    (tmp_path / "s.csv").write_text("\n".join(text) + "\n")
    one_line_error(cli("profile", "import", "chipB", tmp_path / "s.csv", "--profiles", folder),
                   "device (row 0, col 1) is swept at setting", "same settings")


def test_other_platforms_are_refused_naming_what_is_supported(cli, one_line_error, shipped_profiles_dir, tmp_path):
    (tmp_path / "x.csv").write_text("row,col\n0,0\n")
    one_line_error(cli("profile", "import", "chipA", tmp_path / "x.csv", "--profiles", shipped_profiles_dir / "mzi"),
                   "supports platforms with one value per device and field (mrr)")


def test_an_npz_of_many_small_integers_is_refused_before_widening(cli, one_line_error, folder, tmp_path):
    n = 4 << 20                                      # 4 MiB of int8 per column, 160 MiB as five float64 columns
    np.savez(tmp_path / "wide.npz", row=np.zeros(n, np.int8), col=np.zeros(n, np.int8),
             resonance_offset_nm=np.zeros(n, np.int8), gamma_nm=np.ones(n, np.int8), a_1=np.ones(n, np.int8))
    one_line_error(cli("profile", "import", "chipA", tmp_path / "wide.npz", "--profiles", folder),
                   "member 'row' has 4194304 entries", "split the file")


def test_the_shipped_examples_import(cli, tmp_path):
    repo = Path(__file__).resolve().parents[1] / "examples" / "calibration"
    shutil.copy(repo / "chipB2x2.h5", tmp_path / "chipB2x2.h5")
    result = cli("profile", "import", "chipB2x2", repo / "chipB2x2_sweeps.csv", "--profiles", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    err = json.loads(result.stdout)["error_vs_truth"]["resonance_offset"]
    assert err["rms"] < err["previous_rms"] and err["rms"] < 5e-3        # 0.002 detector noise, 64 points
    shipped = read_profile(Path(__file__).resolve().parents[1] / "device_profiles" / "chipB.h5")
    assert (repo / "chipB_parameters.csv").read_text() == parameters_csv(shipped)


def test_sweep_settings_in_pm_are_converted(cli, folder, tmp_path):
    profile = read_profile(folder / "chipB.h5")
    controls, measured = _sweeps(profile)
    (tmp_path / "pm.csv").write_text(_sweep_csv(profile, controls, measured, "pm", 1000.0))
    result = cli("profile", "import", "chipB", tmp_path / "pm.csv", "--profiles", folder, "--out", tmp_path / "n.h5")
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read_profile(tmp_path / "n.h5").calibration["resonance_offset"],
                               profile.fabrication["resonance_offset"], atol=1e-6)


def test_a_calibration_source_with_control_characters_is_an_invalid_profile(folder):
    import h5py

    from pnndeploy.formats.profile_schema import validate_profile

    with h5py.File(folder / "chipA.h5", "r+") as f:
        f["calibration"].attrs["source"] = "imported from \x1b[2Jx.csv"
    assert any("source" in p and "control characters" in p for p in validate_profile(folder / "chipA.h5"))
