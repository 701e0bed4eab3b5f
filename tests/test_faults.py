"""Faulty devices (issue 27 part 3): drawn by the spec, stored in profiles, simulated, found by calibration, mapped
around, reported, and trained for."""

from __future__ import annotations

import copy
import json

import h5py
import numpy as np
import pytest

from pnndeploy.deploy.fault_compensation import compensate_held, row_error
from pnndeploy.deploy.mapping import fault_blind, map_model, repaired
from pnndeploy.errors import ConfigError, ModelFileError
from pnndeploy.formats.input_moments import parse_input_moments
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.formats.process_spec import check_process
from pnndeploy.formats.profile_schema import validate_profile
from pnndeploy.formats.profiles import read_profile, write_profile
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.faults import DEAD, STUCK, realised_settings
from pnndeploy.simulation.fabrication import generate_chip, make_fleet
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet


@pytest.fixture(scope="module")
def faulty_spec(shipped_process) -> dict:
    spec = copy.deepcopy(shipped_process)
    spec["faults"] = {"dead_fraction": 0.03, "stuck_fraction": 0.02}
    return check_process(spec)


@pytest.fixture(scope="module")
def faulty_fleet(tmp_path_factory, faulty_spec):
    folder = tmp_path_factory.mktemp("faulty") / "profiles"
    make_fleet(faulty_spec, 3, "chip", 1, folder)
    return folder


# ------------------------------------------------------------------------------------------- drawn by the spec

def test_faults_are_drawn_at_the_spec_rates_without_moving_any_other_number(shipped_process, faulty_spec):
    names = [f"chip{i}" for i in range(40)]
    codes = np.stack([generate_chip(faulty_spec, n, seed=3).fabrication["faulty"] for n in names])
    assert abs(np.mean(codes == DEAD) - 0.03) < 0.01 and abs(np.mean(codes == STUCK) - 0.02) < 0.01
    clean, broken = generate_chip(shipped_process, "chipQ", seed=3), generate_chip(faulty_spec, "chipQ", seed=3)
    for k in ("gamma", "a", "resonance_offset"):
        assert np.array_equal(clean.fabrication[k], broken.fabrication[k])
    assert np.array_equal(clean.environment.drift_coefficient, broken.environment.drift_coefficient)
    # the lab's calibration flags every faulty ring and folds a stuck drive into its offset
    flagged = broken.calibration["faulty"] == 1
    assert np.array_equal(flagged, broken.fabrication["faulty"] > 0)
    stuck = broken.fabrication["stuck_setting"]
    assert np.all(stuck[broken.fabrication["faulty"] != STUCK] == 0)
    # ... and its neighbours' offsets the heat the stuck drive spills into them (crosstalk 0.02, the bank's row)
    spill = get_platform("mrr").device_spill(stuck, broken.shape)
    assert np.all(spill[:, 1:-1] == stuck[:, :-2] + stuck[:, 2:])
    assert np.allclose(broken.calibration["resonance_offset"] - clean.calibration["resonance_offset"],
                       stuck + 0.02 * spill)


@pytest.mark.parametrize("faults, fragment", [
    ({"dead_fraction": -0.1}, "must be >= 0"),
    ({"dead_fraction": 0.6}, "must be <= 0.5"),
    ({"dead_fraction": 0.3, "stuck_fraction": 0.3}, "more than 0.5"),
    ({"dead": 0.1}, "is unknown"),
    ([0.1], "must be a mapping"),
])
def test_bad_fault_sections_are_refused(shipped_process, faults, fragment):
    spec = dict(copy.deepcopy(shipped_process), faults=faults)
    with pytest.raises(ConfigError, match=fragment):
        check_process(spec)


def test_platforms_without_a_fault_model_refuse_the_section(cli, tmp_path, one_line_error):
    import yaml

    from pnndeploy.training.perturbation_set import default_process_path

    spec = yaml.safe_load(default_process_path("freespace").read_text())
    spec["faults"] = {"dead_fraction": 0.01}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    one_line_error(cli("fleet", "make", "--process", path, "--count", "1", "--out", tmp_path / "f"),
                   "faults", "not modelled for freespace")
    assert not (tmp_path / "f").exists()


# ------------------------------------------------------------------------------------------------- profiles

def test_fault_fields_round_trip(faulty_fleet, tmp_path):
    profile = read_profile(faulty_fleet / "chipA.h5")
    assert profile.fabrication["faulty"].dtype == np.uint8 and profile.calibration["faulty"].any()
    write_profile(profile, tmp_path / "x.h5")
    again = read_profile(tmp_path / "x.h5")
    for section in ("calibration", "fabrication"):
        for k, v in getattr(profile, section).items():
            assert np.array_equal(getattr(again, section)[k], v), (section, k)


@pytest.mark.parametrize("edit, fragment", [
    (lambda f: f["calibration"].__setitem__("faulty", np.full((16, 16), 2, np.uint8)), "codes other than 0, 1"),
    (lambda f: (f["fabrication"].__delitem__("faulty"),
                f["fabrication"].create_dataset("faulty", data=np.zeros((4, 4), np.uint8)).attrs.__setitem__(
                    "units", "1")), "has shape"),
    (lambda f: (f["calibration"].create_dataset("stuck_setting", data=np.zeros((16, 16))).attrs.__setitem__(
        "units", "nm")), "fabrication truth only"),
    (lambda f: (f["fabrication"].__delitem__("faulty"),
                f["fabrication"].create_dataset("faulty", data=np.zeros((16, 16))).attrs.__setitem__(
                    "units", "1")), "expected an integer"),
    (lambda f: f["fabrication"]["stuck_setting"].__setitem__((0, 0), 1.5)
     if f["fabrication"]["faulty"][0, 0] != 2 else f["fabrication"]["stuck_setting"].__setitem__((0, 1), 0.0),
     "not 0 on a device that is not stuck"),
])
def test_bad_fault_fields_are_refused(faulty_fleet, tmp_path, edit, fragment):
    import shutil

    path = tmp_path / "chipA.h5"
    shutil.copyfile(faulty_fleet / "chipA.h5", path)
    with h5py.File(path, "a") as f:
        if "faulty" in f["calibration"] and fragment == "codes other than 0, 1":
            del f["calibration"]["faulty"]
            f["calibration"].create_dataset("faulty", data=np.full((16, 16), 2, np.uint8)).attrs["units"] = "1"
        else:
            edit(f)
    problems = "; ".join(validate_profile(path))
    assert fragment in problems, problems


# --------------------------------------------------------------------------------------------------- physics

def test_a_faulty_ring_ignores_its_setting_in_the_simulation(faulty_fleet, model_file):
    model = load_model(model_file)
    profile = read_profile(faulty_fleet / "chipA.h5")
    platform = get_platform("mrr")
    deployment = map_model(model, profile)
    layer = deployment.layers[0]
    held = platform.per_setting(profile.fabrication["faulty"] > 0, layer.settings.shape, profile.shape)
    assert held.any()
    applied = realised_settings(platform, layer.settings, profile.fabrication, profile.shape)
    assert np.array_equal(applied[~held], layer.settings[~held])
    assert np.all(applied[held] == 0)          # the channel applies nothing; a stuck drive is in the resting truth
    from pnndeploy.platforms.faults import resting_truth

    rest = resting_truth(platform, profile.fabrication, profile.environment.crosstalk, profile.shape)
    stuck = profile.fabrication["faulty"] == 2
    np.testing.assert_allclose((rest["resonance_offset"] - profile.fabrication["resonance_offset"])[stuck],
                               profile.fabrication["stuck_setting"][stuck], atol=0.02 * 2 * 3.0)
    # programming anything else on the faulty rings changes nothing the chip does
    other = copy.deepcopy(deployment)
    other.layers[0].settings = np.where(held, 2.5, layer.settings)
    X = np.random.default_rng(0).random((20, model.n_features))
    a = SimulatedFleet(model, [profile], [deployment]).scores(X, Conditions(), slice(0, 1))
    b = SimulatedFleet(model, [profile], [other]).scores(X, Conditions(), slice(0, 1))
    assert np.array_equal(a, b)


def test_calibration_finds_the_faulty_rings(cli, faulty_fleet, tmp_path):
    out = tmp_path / "chipA.h5"
    result = cli("calibrate", "chipA", "--profiles", faulty_fleet, "--points", "256", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    truth = read_profile(faulty_fleet / "chipA.h5").fabrication["faulty"] > 0
    assert doc["faulty"]["count"] == int(truth.sum()) and doc["error_vs_truth"]["faulty"]["missed"] == 0
    assert doc["error_vs_truth"]["faulty"]["false_alarms"] == 0
    assert np.array_equal(read_profile(out).calibration["faulty"] > 0, truth)
    # a station that sees most devices flat (a laser off) is not a chip that bad: refused, nothing written
    refused = cli("calibrate", "chipA", "--profiles", faulty_fleet, "--points", "256", "--out", tmp_path / "n.h5",
                  "--max-faulty", "0.01")
    assert refused.exit_code == 2 and "--max-faulty" in refused.stderr and not (tmp_path / "n.h5").exists()


def test_a_parameter_file_may_flag_faulty_devices(cli, faulty_fleet, tmp_path, one_line_error):
    from pnndeploy.deploy.calibration_import import parameters_csv

    profile = read_profile(faulty_fleet / "chipB.h5")
    lines = parameters_csv(profile).splitlines()
    flags = (profile.fabrication["faulty"] > 0).astype(int).ravel()
    good = "\n".join([lines[0] + ",faulty_1"] + [f"{line},{f}" for line, f in zip(lines[1:], flags)]) + "\n"
    (tmp_path / "p.csv").write_text(good)
    result = cli("profile", "import", "chipB", tmp_path / "p.csv", "--profiles", faulty_fleet,
                 "--out", tmp_path / "new.h5", "--json")
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_profile(tmp_path / "new.h5").calibration["faulty"].ravel(), flags)
    (tmp_path / "bad.csv").write_text(good.replace(",1\n", ",2\n", 1))
    one_line_error(cli("profile", "import", "chipB", tmp_path / "bad.csv", "--profiles", faulty_fleet,
                       "--out", tmp_path / "bad.h5"), "faulty must be 0")
    assert not (tmp_path / "bad.h5").exists()


# --------------------------------------------------------------------------------------------------- mapping

def test_compensation_is_the_least_mean_square_row_error():
    rng = np.random.default_rng(0)
    X = rng.random((500, 12)) @ rng.random((12, 12))            # correlated inputs
    M = X.T @ X / len(X)
    W = rng.uniform(-1, 1, (5, 12))
    held = np.zeros_like(W, dtype=bool)
    held[[0, 0, 3], [2, 7, 5]] = True
    values = np.full_like(W, -0.9)
    target = compensate_held(W, held, values, M)
    assert np.array_equal(target[~held.any(axis=1)], W[~held.any(axis=1)])      # untouched rows stay
    assert np.all(target[held] == -0.9)
    naive = np.where(held, values, W)
    better = row_error(W, target, M)
    assert np.all(better[[0, 3]] < 0.5 * row_error(W, naive, M)[[0, 3]])
    # the free weights solve the (ridge-regularised) normal equations: M_RR d_R + M_RF d_F + ridge d_R = 0
    from pnndeploy.deploy.fault_compensation import RIDGE

    d = target[0] - W[0]
    free = ~held[0]
    gradient = (M @ d)[free] + RIDGE * np.mean(np.diag(M)) * d[free]
    assert np.abs(gradient).max() < 1e-9 * np.abs(M).max()
    assert np.array_equal(compensate_held(W, held, values, None), W)


def test_mapping_holds_faulty_rings_and_counts_them(faulty_fleet, model_file):
    model = load_model(model_file)
    profile = read_profile(faulty_fleet / "chipA.h5")
    aware, blind = map_model(model, profile), map_model(model, fault_blind(profile))
    platform = get_platform("mrr")
    for k, layer in enumerate(aware.layers):
        held = platform.per_setting(profile.calibration["faulty"] > 0, layer.settings.shape, profile.shape)
        used = held if layer.rows is None else held[layer.rows]                 # the rows the outputs sit on
        assert layer.clipping.faulty == int(used.sum())
        assert np.all(np.abs(layer.settings[held]) <= (6.0 / 4095))           # set to rest (0 on the DAC grid)
        assert blind.layers[k].clipping.faulty == 0 and blind.layers[k].rows is None
    assert aware.clipping.faulty == sum(layer.clipping.faulty for layer in aware.layers) > 0
    # the model file records its layers' input moments, which the row compensation uses
    assert set(model.input_moments) == {layer.name for layer in model.layers}


def test_fault_aware_mapping_recovers_most_of_what_faults_cost(faulty_fleet, model_file):
    """On the faulty chips, the row-compensated mapping's output error is below the uncompensated one's."""
    model = load_model(model_file)
    X = model.features(np.random.default_rng(1).random((200, model.n_features)))
    bare = copy.copy(model)
    bare.input_moments = {}
    profiles = [read_profile(p) for p in sorted(faulty_fleet.glob("*.h5"))]
    errors = {}
    for name, m in (("aware", model), ("bare", bare)):
        fleet = SimulatedFleet(m, profiles, [map_model(m, p) for p in profiles])
        twin = [repaired(p) for p in profiles]
        ideal = SimulatedFleet(m, twin, [map_model(m, p) for p in twin])
        errors[name] = np.abs(fleet.scores(X, Conditions(), slice(0, 3)) -
                              ideal.scores(X, Conditions(), slice(0, 3))).mean()
    assert errors["aware"] < errors["bare"]


def test_transfer_reports_faulty_devices_and_their_cost(cli, faulty_fleet, model_file, shipped_profiles_dir):
    result = cli("transfer", "--model", model_file, "--fleet", "--profiles", faulty_fleet, "--json", "--no-save")
    assert result.exit_code == 0, result.output
    for device in json.loads(result.stdout)["devices"]:
        f = device["faults"]
        assert f["devices"] > 0 and f["compensated"] is True
        assert f["cost"] == pytest.approx(device["accuracy"] - f["accuracy_if_working"])
        assert device["clipping"]["faulty"] > 0
    clean = cli("transfer", "--model", model_file, "--device", "chipA", "--profiles", shipped_profiles_dir,
                "--json", "--no-save")
    assert json.loads(clean.stdout)["devices"][0]["faults"] is None


# ------------------------------------------------------------------------------------------------ model files

@pytest.mark.parametrize("value, fragment", [
    ([1, 2], "not a JSON object"),
    ({"nolayer": {"second_moment": [[1.0]]}}, "names no on-chip layer"),
    ({"layer0": {"second_moment": "x"}}, "not a matrix"),
    ({"layer0": {"second_moment": [[1.0, 2.0], [0.0, 1.0]]}}, "symmetric"),
    ({"layer0": {"second_moment": [[1.0, 2.0], [2.0, 1.0]]}}, "positive semi-definite"),   # would break the solve
])
def test_bad_input_moments_are_the_files_error(value, fragment):
    class Layer:
        name, shape = "layer0", (3, 2)

    with pytest.raises(ModelFileError, match=fragment):
        parse_input_moments("model m.onnx", value, [Layer()])


def test_input_moments_of_a_wide_layer_are_refused_unread():
    class Wide:
        name, shape = "layer0", (3, 5000)

    with pytest.raises(ModelFileError, match="wider than"):
        parse_input_moments("model m.onnx", {"layer0": {"second_moment": "never converted"}}, [Wide()])


# ------------------------------------------------------------------------------------------- training for them

def test_spec_sat_trains_for_the_specs_fault_rate(faulty_spec, tmp_path):
    import torch
    import yaml

    from pnndeploy.training.perturbation_set import perturbation_set
    from pnndeploy.training.spec_sat import SpecAdversary

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(faulty_spec))
    pset = perturbation_set("mrr", path)
    assert pset.fault_rate == pytest.approx(0.05) and pset.offset_sigma == pytest.approx(0.08)
    assert pset.to_dict()["fault_rate"] == pytest.approx(0.05)
    theta = torch.nn.Parameter(torch.full((200, 100), 0.7))
    adversary = SpecAdversary([theta], pset)
    adversary.begin()
    moved = adversary._failed[0]
    assert abs(float(moved.float().mean()) - 0.05) < 0.01
    # the dead ones rest at their offset alone (|x| ~ 0.08 nm), nowhere near the trained 0.7 nm
    assert float((theta.detach()[moved] - 0.7).abs().median()) > 0.5
    theta.grad = torch.ones_like(theta)
    adversary.restore()
    assert torch.equal(theta.detach(), torch.full((200, 100), 0.7))
    assert float(theta.grad[moved].abs().max()) == 0.0 and float(theta.grad[~moved].min()) == 1.0


# ------------------------------------------------------------------------------------------- output placement

def test_outputs_are_placed_off_rows_with_faulty_rings(faulty_fleet, model_file, tmp_path):
    from pnndeploy.formats.deployments import read_deployment, write_deployment

    model = load_model(model_file)
    profile = read_profile(faulty_fleet / "chipA.h5")
    deployment = map_model(model, profile)
    platform = get_platform("mrr")
    last = deployment.layers[-1]
    assert last.rows is not None and last.settings.shape[0] == 16 > model.layers[-1].shape[0]
    held = platform.per_setting(profile.calibration["faulty"] > 0, last.settings.shape, profile.shape)
    unused = np.setdiff1d(np.arange(16), last.rows)
    # the 10 classes sit on the rows whose faulty rings cost least (counted by their input's mean square)
    energy = np.diag(model.input_moments[last.name])
    cost = (held * energy[None, :]).sum(axis=1)
    assert cost[last.rows].max() <= cost[unused].min()
    assert np.all(np.abs(last.settings[unused]) <= 6.0 / 4095) and last.clipping.devices == 10 * last.settings.shape[1]
    # the placement travels with the deployment file, and a forged one is refused
    path = write_deployment(deployment, tmp_path / "d.h5")
    assert np.array_equal(read_deployment(path).layers[-1].rows, last.rows)
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == 2                 # an unplaced deployment stays format 1
    with h5py.File(path, "a") as f:
        f["settings"][last.name].attrs["rows"] = np.array([0, 0, 1])
    with pytest.raises(Exception, match="not distinct rows"):
        read_deployment(path)
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 3
    with pytest.raises(Exception, match="upgrade pnndeploy"):
        read_deployment(path)


def test_a_placed_chip_evaluates_alone_as_in_a_fleet_and_on_a_station(faulty_fleet, shipped_profiles_dir, model_file):
    from pnndeploy.backends.simulated import SimulatedChip
    from pnndeploy.deploy.hardware import HardwareChip

    model = load_model(model_file)
    X = np.random.default_rng(2).random((64, model.n_features))
    y = np.arange(64) % 10
    placed = read_profile(faulty_fleet / "chipA.h5")
    plain = read_profile(shipped_profiles_dir / "chipA.h5")
    deps = [map_model(model, p) for p in (placed, plain)]
    assert deps[0].layers[-1].rows is not None and deps[1].layers[-1].rows is None
    together = SimulatedFleet(model, [placed, plain], deps).scores(X, Conditions(), slice(0, 2))
    alone = [SimulatedFleet(model, [p], [d]).scores(X, Conditions(), slice(0, 1))[0] for p, d in zip((placed, plain),
                                                                                                     deps)]
    np.testing.assert_allclose(together[0], alone[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(together[1], alone[1], rtol=1e-5, atol=1e-5)
    station = HardwareChip(model, placed, deps[0], SimulatedChip(profile=placed))
    assert station.accuracy(X, y)[0] == SimulatedFleet(model, [placed], deps[:1]).accuracy(X, y)[0]


def test_the_cli_defaults_are_the_calibrations_own():
    """The options are declared before anything heavy is imported, so they repeat three numbers: kept equal here."""
    from pnndeploy.cli import main
    from pnndeploy.deploy.calibration import DEFAULT_MAX_FAULTY, DEFAULT_MAX_RESIDUAL, MAX_POINTS, MIN_POINTS

    for command in (main.commands["calibrate"], main.commands["profile"].commands["import"]):
        params = {p.name: p for p in command.params}
        assert params["max_faulty"].default == DEFAULT_MAX_FAULTY
        assert params["max_residual"].default == DEFAULT_MAX_RESIDUAL
    points = {p.name: p for p in main.commands["calibrate"].params}["points"].type
    assert (points.min, points.max) == (MIN_POINTS, MAX_POINTS)


def test_a_stuck_heater_warms_its_neighbours_in_every_tile_as_the_calibration_says(faulty_spec):
    """With no calibration error and no noise, what the mapper's calibrated model of a chip with stuck rings
    realises is what the simulator realises, for a layer whose last tile is partial (20 inputs on 16 columns)."""
    spec = copy.deepcopy(faulty_spec)
    spec["faults"] = {"stuck_fraction": 0.1}
    spec["calibration"]["resonance_offset_sigma_nm"] = 0.0
    spec["calibration"]["param_rel_sigma"] = {"gamma": 0.0, "a": 0.0}
    spec["environment"]["detector_noise"] = 0.0
    chip = generate_chip(check_process(spec), "chipS", seed=5)
    platform = get_platform("mrr")
    shape = (12, 20)
    rng = np.random.default_rng(0)
    W = rng.uniform(-0.5, 0.8, shape)
    from types import SimpleNamespace

    mapped = platform.map_layer(W, np.ones(shape), chip.calibration, chip.environment, chip.shape, None, shape)
    deployment = SimpleNamespace(layers=[SimpleNamespace(settings=mapped.settings, rows=None)])
    fleet = SimulatedFleet.__new__(SimulatedFleet)          # only the layer state is needed here
    fleet.platform, fleet.array, fleet.device = platform, chip.shape, "cpu"
    from pnndeploy.platforms.faults import resting_profile

    state = fleet._layer(0, shape, [resting_profile(platform, chip)], [deployment])
    import torch

    from pnndeploy.platforms.base import ChipState

    simulated = platform.logical_weights(state, slice(0, 1), ChipState(torch.tensor(0.0)))[0].double().numpy()
    from pnndeploy.platforms.mrr import _neighbour_settings
    from pnndeploy.platforms.tiling import ring_index

    ri, ci = ring_index(shape, chip.shape)
    held = chip.calibration["faulty"][ri, ci] > 0
    applied = np.where(held, 0.0, mapped.settings)
    cal = {k: chip.calibration[k][ri, ci] for k in ("gamma", "a")}
    modelled = platform.transfer(applied + chip.calibration["resonance_offset"][ri, ci]
                                 + 0.02 * _neighbour_settings(applied, ci, chip.shape), **cal)
    assert held.any() and np.abs(simulated - modelled).max() < 1e-5


def test_uncalibrated_transfer_does_not_claim_to_map_around_faults(cli, faulty_fleet, model_file):
    result = cli("transfer", "--model", model_file, "--device", "chipA", "--profiles", faulty_fleet, "--json",
                 "--no-save", "--uncalibrated")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["devices"][0]["faults"]["compensated"] is False


def test_a_compensation_bias_does_not_reach_faulty_devices(faulty_fleet, model_file):
    from pnndeploy.simulation.compensation import _common_shift

    model = load_model(model_file)
    profiles = [read_profile(p) for p in sorted(faulty_fleet.glob("*.h5"))]
    fleet = SimulatedFleet(model, profiles, [map_model(model, p) for p in profiles])
    shift = _common_shift(fleet, np.array([0.1, 0.2, 0.3]), None)
    faulty = np.stack([p.fabrication["faulty"] > 0 for p in profiles])
    assert faulty.any() and np.all(shift[faulty] == 0)
    assert np.all(shift[~faulty] == np.broadcast_to(np.array([0.1, 0.2, 0.3])[:, None, None], faulty.shape)[~faulty])


def test_fault_fields_on_a_platform_without_a_fault_model_are_refused(shipped_profiles_dir, tmp_path):
    import shutil

    path = tmp_path / "chipA.h5"
    shutil.copyfile(shipped_profiles_dir / "freespace" / "chipA.h5", path)
    with h5py.File(path, "a") as f:
        shape = f["calibration"]["pixel_offset"].shape if "pixel_offset" in f["calibration"] else (2, 8, 8)
        f["calibration"].create_dataset("faulty", data=np.zeros(shape, np.uint8)).attrs["units"] = "1"
    problems = "; ".join(validate_profile(path))
    assert "do not model them" in problems, problems


def test_a_fleet_of_faulty_and_sound_ring_chips_maps_as_each_alone(faulty_fleet, shipped_profiles_dir, model_file):
    from pnndeploy.deploy.mapping import map_models

    model = load_model(model_file)
    chips = [read_profile(faulty_fleet / "chipA.h5"), read_profile(shipped_profiles_dir / "chipA.h5"),
             read_profile(faulty_fleet / "chipB.h5")]
    together = map_models(model, chips)
    for chip, deployment in zip(chips, together):
        alone = map_model(model, chip)
        for a, b in zip(alone.layers, deployment.layers):
            assert np.array_equal(a.settings, b.settings) and a.clipping == b.clipping
            assert (a.rows is None and b.rows is None) or np.array_equal(a.rows, b.rows)
