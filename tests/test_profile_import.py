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
    controls = sweep_controls(profile, points)
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
