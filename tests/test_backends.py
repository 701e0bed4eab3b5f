"""The backend interface in-process: the wire format, profiles that name a backend, calibration by measurement,
the in-situ forward pass, and a third-party backend plugged in through the entry point."""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pnndeploy.backends import BackendError, LayerProgram, backend_class, backend_kinds
from pnndeploy.backends.simulated import SimulatedChip
from pnndeploy.backends.wire import WireError, decode_array, encode_array
from pnndeploy.formats.profiles import BackendSpec, read_profile, write_profile
from pnndeploy.platforms import get_platform


# ------------------------------------------------------------------------------------------- wire format

def test_wire_arrays_round_trip_exactly():
    x = np.random.default_rng(0).standard_normal((3, 5))
    np.testing.assert_array_equal(decode_array(json.loads(json.dumps(encode_array(x))), "x", 2), x)
    f4 = np.arange(4, dtype="<f4")
    assert decode_array({"dtype": "<f4", "shape": [4], "data": base64.b64encode(f4.tobytes()).decode()},
                        "x").tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("obj, fragment", [
    ({"dtype": "|O", "shape": [1], "data": ""}, "dtype"),
    ({"dtype": "<f8", "shape": [2], "data": base64.b64encode(b"\0" * 8).decode()}, "needs 16"),
    ({"dtype": "<f8", "shape": [2000, 2000], "data": ""}, "limit"),
    ({"dtype": "<f8", "shape": [1], "data": "***"}, "base64"),
    ({"dtype": "<f8", "shape": [-1], "data": ""}, "shape"),
    ([1, 2, 3], "array object"),
])
def test_malformed_wire_arrays_are_refused(obj, fragment):
    with pytest.raises(WireError, match=fragment):
        decode_array(obj, "x")


# ---------------------------------------------------------------------------------------------- profiles

def test_a_profile_keeps_its_backend_and_calibration_history(tmp_path, tiny_fleet_dir):
    from pnndeploy.formats.profiles import CalibrationRecord

    profile = read_profile(tiny_fleet_dir / "chipA.h5")
    old = CalibrationRecord(dict(profile.calibration), "2026-01-01T00:00:00+00:00", 24.0, "2026-02-01T00:00:00+00:00")
    remote = dataclasses.replace(profile, fabrication=None, calibration_history=[old],
                                 backend=BackendSpec("http", "http://127.0.0.1:1", {"device": "chipA"}))
    write_profile(remote, tmp_path / "r.h5")
    back = read_profile(tmp_path / "r.h5")
    assert back.backend == remote.backend and not back.simulated
    assert back.calibration_history[0].temperature_C == 24.0
    np.testing.assert_array_equal(back.calibration_history[0].fields["gamma"], profile.calibration["gamma"])


def test_a_backend_group_without_kind_is_invalid(tmp_path, tiny_fleet_dir):
    import h5py

    from pnndeploy.formats.profile_schema import validate_profile

    path = tmp_path / "p.h5"
    shutil.copyfile(tiny_fleet_dir / "chipA.h5", path)
    with h5py.File(path, "a") as f:
        f.create_group("backend").attrs["address"] = "http://x"
    assert any("'kind'" in p for p in validate_profile(path))


# ------------------------------------------------------------------------------------------- the chip

def test_the_simulated_chip_measures_what_the_fleet_simulator_computes(tiny_fleet_dir, tiny_export):
    from pnndeploy.deploy.mapping import map_model
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.simulation.fleet import Conditions, SimulatedFleet

    model = load_model(tiny_export.path)
    profile = read_profile(tiny_fleet_dir / "chipB.h5")
    deployment = map_model(model, profile)
    quiet = dataclasses.replace(profile, environment=dataclasses.replace(profile.environment, detector_noise=0.0))
    chip = SimulatedChip(profile=quiet, measurement_noise=0.0)
    chip.program([LayerProgram(0, model.layers[0].weight.shape, deployment.layers[0].settings)])
    chip.set_temperature(25.5)
    x = np.random.default_rng(1).random((4, model.layers[0].weight.shape[1]))
    fleet = SimulatedFleet(model, [quiet], [deployment])
    W = fleet.realised_weights(0, slice(0, 1), Conditions(delta_T=0.5))[0]
    np.testing.assert_allclose(chip.infer(0, x), x @ W.T.astype(np.float64), rtol=1e-5, atol=1e-6)
    with pytest.raises(BackendError, match="not programmed"):
        chip.infer(1, x)


def test_the_simulated_chip_keeps_the_truth_of_the_shapes_its_slots_hold_only(tiny_fleet_dir):
    chip = SimulatedChip(profile=read_profile(tiny_fleet_dir / "chipB.h5"), measurement_noise=0.0)

    def program(index, shape):
        chip.program([LayerProgram(index, shape, np.zeros(shape))])
        return set(chip._truth)

    assert program(0, (3, 5)) == {(3, 5)}
    assert program(1, (2, 3)) == {(3, 5), (2, 3)}
    assert program(0, (3, 5)) == {(3, 5), (2, 3)}        # re-programmed in its shape: the truth kept
    assert program(1, (3, 5)) == {(3, 5)}                 # no slot holds 2x3 any more
    assert program(0, (4, 4)) == {(3, 5), (4, 4)}
    x = np.random.default_rng(0).random((2, 4))
    np.testing.assert_array_equal(chip.infer(0, x), _programmed(chip.profile, (4, 4)).infer(0, x))   # as if new


def _programmed(profile, shape):
    fresh = SimulatedChip(profile=profile, measurement_noise=0.0)
    fresh.program([LayerProgram(0, shape, np.zeros(shape))])
    return fresh


def test_mrr_fit_recovers_the_transfer_function_exactly_without_noise():
    platform = get_platform("mrr")
    rng = np.random.default_rng(3)
    truth = {"resonance_offset": 0.1 * rng.standard_normal((2, 3)), "gamma": 0.15 + 0.01 * rng.random((2, 3)),
             "a": 1 - 0.05 * rng.random((2, 3))}
    rows, cols = (g.ravel() for g in np.indices((2, 3)))
    h = np.linspace(-1, 1, 801)
    fields, residual = platform.fit_response(h, platform.device_response(truth, np.zeros((2, 3)), rows, cols, h, 0))
    for name, value in truth.items():
        np.testing.assert_allclose(fields[name], value.ravel(), atol=1e-7)
    assert residual.max() < 1e-9


def test_calibrating_a_simulated_chip_in_process_reports_the_error_against_the_truth(cli, tiny_fleet_dir, tmp_path):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    original = (mine / "chipC.h5").read_bytes()
    dry = cli("calibrate", "chipC", "--profiles", mine, "--dry-run", "--points", "512", "--json")
    assert dry.exit_code == 0, dry.output
    assert (mine / "chipC.h5").read_bytes() == original             # a dry run writes nothing
    err = json.loads(dry.stdout)["error_vs_truth"]["resonance_offset"]
    assert err["rms"] < 1e-3 < 0.02 < err["previous_rms"]
    refused = cli("calibrate", "chipC", "--profiles", mine, "--max-residual", "1e-6")
    assert refused.exit_code == 2 and "fit badly" in refused.stderr and "nothing was written" in refused.stderr
    assert (mine / "chipC.h5").read_bytes() == original
    written = cli("calibrate", "chipC", "--profiles", mine, "--out", tmp_path / "new.h5")
    assert written.exit_code == 0, written.output
    assert len(read_profile(tmp_path / "new.h5").calibration_history) == 1


def test_calibration_by_sweep_is_refused_for_a_mesh(cli, shipped_profiles_dir, one_line_error):
    one_line_error(cli("calibrate", "chipA", "--profiles", shipped_profiles_dir / "mzi", "--dry-run"),
                   "not implemented for mzi")


def test_chip_serve_refuses_a_profile_that_points_at_a_station(cli, tiny_fleet_dir, tmp_path, one_line_error):
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    assert cli("chip", "connect", "chipA", "--profiles", mine, "--address", "http://127.0.0.1:9").exit_code == 0
    one_line_error(cli("chip", "serve", "chipA-remote", "--profiles", mine), "points at a station")
    one_line_error(cli("chip", "connect", "chipA", "--profiles", mine, "--address", "127.0.0.1:9"), "URL")
    one_line_error(cli("chip", "connect", "chipA", "--profiles", mine, "--address", "x", "--kind", "nope"),
                   "no backend of kind 'nope'")


# -------------------------------------------------------------------------------------- in-situ training

def test_the_in_situ_forward_is_the_chips_and_the_gradient_the_models(tiny_fleet_dir):
    from pnndeploy.training.in_situ import InSituChip
    from pnndeploy.training.model import PNN

    platform = get_platform("mrr")
    profile = read_profile(tiny_fleet_dir / "chipA.h5")
    model = PNN([6, 3], platform, seed=0)
    x = torch.rand(5, 6)
    digital = model(x)
    (grad_digital,) = torch.autograd.grad(digital.sum(), model.layers[0].controls)
    chip = InSituChip(SimulatedChip(profile=profile, measurement_noise=0.0), profile)
    chip.attach(model)
    measured = model(x)
    (grad_measured,) = torch.autograd.grad(measured.sum(), model.layers[0].controls)
    # forward: what the chip measured at the mapped settings; backward: the digital model's Jacobian
    layer = model.layers[0]
    y = chip.backend.infer(0, x.double().numpy())
    expected = torch.from_numpy(y).float() * layer.gain.detach() + layer.bias.detach()
    torch.testing.assert_close(measured.detach(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(measured, digital, atol=1e-3)          # the chip is not the nominal model
    torch.testing.assert_close(grad_measured, grad_digital)
    assert chip.programs == 1 and chip.measurements == 1
    model(x)
    assert chip.programs == 1                                         # same controls: not programmed again
    chip.detach(model)
    torch.testing.assert_close(model(x), digital)


# ------------------------------------------------------------------------------------ a lab's own backend

@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The README's example station (examples/lab_station.py), installed as a package registering 'mystation'."""
    site = tmp_path / "site"
    site.mkdir()
    shutil.copyfile(Path(__file__).resolve().parents[1] / "examples" / "lab_station.py", site / "lab_station.py")
    info = site / "lab_station-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-station\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pnndeploy.backends]\nmystation = lab_station:LabStation\n")
    monkeypatch.syspath_prepend(str(site))
    yield
    sys.modules.pop("lab_station", None)


def test_a_labs_backend_plugs_in_through_the_entry_point(plugin, cli, tiny_fleet_dir, model_file, tmp_path,
                                                        one_line_error):
    assert backend_kinds()["mystation"] == "lab_station:LabStation"
    assert backend_class("mystation").kind == "mystation"
    mine = tmp_path / "profiles"
    shutil.copytree(tiny_fleet_dir, mine)
    made = cli("chip", "connect", "chipC", "--profiles", mine, "--kind", "mystation",
               "--address", str(tiny_fleet_dir / "chipC.h5"), "--name", "chipC-lab")
    assert made.exit_code == 0, made.output
    result = cli("transfer", "--model", model_file, "--profiles", mine, "--device", "chipC", "--device", "chipC-lab",
                 "--no-save", "--json")
    assert result.exit_code == 0, result.output
    by = {d["device"]: d for d in json.loads(result.stdout)["devices"]}
    assert by["chipC-lab"]["evaluated_by"] == "backend:mystation"
    assert by["chipC"]["ci95"][0] <= by["chipC-lab"]["accuracy"] <= by["chipC"]["ci95"][1]
    # a station without a temperature controller: the audit refuses it, transfer at a ΔT too
    one_line_error(cli("audit", "--model", model_file, "--profiles", mine, "--device", "chipC-lab"),
                   "no temperature controller")
    one_line_error(cli("transfer", "--model", model_file, "--profiles", mine, "--device", "chipC-lab",
                       "--temperature-delta", "1", "--no-save"), "no temperature controller")
    assert cli("calibrate", "chipC-lab", "--profiles", mine, "--dry-run").exit_code == 0


def test_a_flat_sweep_is_a_faulty_ring_not_a_fit():
    platform = get_platform("mrr")
    h = np.linspace(-3, 3, 600)
    rng = np.random.default_rng(0)
    flat = np.array([1.0, -0.4])[:, None] + 0.002 * rng.standard_normal((2, 600))   # dead: off and on resonance
    truth = {"resonance_offset": np.array([[0.3]]), "gamma": np.array([[0.15]]), "a": np.array([[0.98]])}
    dip = platform.device_response(truth, np.zeros((1, 1)), [0], [0], h, 0.0) + 0.002 * rng.standard_normal(600)
    fields, residual = platform.fit_response(h, np.vstack([flat, dip]))
    assert fields["faulty"].tolist() == [1, 1, 0]
    assert np.all(residual[:2] < 0.003) and np.isfinite(residual).all()
    # the calibrated model of a faulty ring gives its level at setting 0 (within reach), and the far end for 1
    at_rest = platform.transfer(fields["resonance_offset"][:2], fields["gamma"][:2], fields["a"][:2])
    assert abs(at_rest[1] - (-0.4)) < 2e-3 and at_rest[0] > 0.99
    assert abs(fields["resonance_offset"][2] - 0.3) < 1e-2            # the working ring fitted as before


def test_a_flat_sweep_under_a_drifting_laser_is_still_flat_and_a_dip_is_not():
    from pnndeploy.platforms.mrr import unresponsive

    h = np.linspace(-3, 3, 600)
    rng = np.random.default_rng(1)
    drift = 0.15 * (h - h[0]) / (h[-1] - h[0])                   # the laser's power creeps up 15 % of a unit
    flat = 0.9 + drift + 0.003 * rng.standard_normal(600)
    truth = {"resonance_offset": np.array([[-1.0]]), "gamma": np.array([[0.15]]), "a": np.array([[0.9]])}
    dip = get_platform("mrr").device_response(truth, np.zeros((1, 1)), [0], [0], h, 0.0)[0] + drift
    assert unresponsive(np.vstack([flat, dip])).tolist() == [True, False]


def test_a_shallow_dip_is_still_no_calibration():
    platform = get_platform("mrr")
    h = np.linspace(-3, 3, 600)
    shallow = 1.0 - 0.06 / (1 + (h / 0.15) ** 2)[None, :] + 0.002 * np.random.default_rng(0).standard_normal((1, 600))
    _, residual = platform.fit_response(h, shallow)
    assert np.isinf(residual).all()


@pytest.mark.parametrize("address, fragment", [("http://127.0.0.1:99999", "not a valid URL"),
                                               ("ftp://x", "http:// or https://"), ("http://", "with a host")])
def test_bad_backend_addresses_are_refused(address, fragment):
    from pnndeploy.backends.http import HttpBackend

    with pytest.raises(BackendError, match=fragment):
        HttpBackend(address, {}, 1.0)


def test_calibrating_an_in_process_chip_at_another_temperature_is_refused(cli, tiny_fleet_dir, one_line_error):
    one_line_error(cli("calibrate", "chipA", "--profiles", tiny_fleet_dir, "--temperature", "30", "--dry-run"),
                   "truth holds at 25 degC")
    one_line_error(cli("calibrate", "chipA", "--profiles", tiny_fleet_dir, "--temperature", "nan"), "finite")
