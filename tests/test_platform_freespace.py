"""The free-space platform: imaging physics, masks, calibrated mapping, FD-SAT, audit sweeps and the CLI end to end."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from pnndeploy.deploy.mapping import map_model, uncalibrated
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.formats.process_spec import load_process
from pnndeploy.formats.profiles import read_profile
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.freespace import MISALIGNMENT_FIELDS, misalignment_of, perturbed
from pnndeploy.platforms.imaging import (
    Misalignment,
    frame_shape,
    imaging_operator,
    resample,
)
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet
from pnndeploy.training.fd_sat import MisalignmentAdversary

FS = get_platform("freespace")
REPO = Path(__file__).resolve().parents[1]
FS_PROFILES = REPO / "device_profiles" / "freespace"


def ideal(profile, **misalignment):
    """``profile`` made a perfect setup (no pixel errors, no blur, no drift, no noise), misaligned as given."""
    fab = {k: v.copy() for k, v in profile.fabrication.items()}
    fab[FS.offset_name][:] = 0.0
    fab["pixel_gain"][:] = 1.0
    values = {"rotation": 0.0, "shift_x": 0.0, "shift_y": 0.0, "scale": 1.0, **misalignment}
    for key in MISALIGNMENT_FIELDS:
        fab[key] = np.array([float(values[key])])
    env = replace(profile.environment, crosstalk=0.0, detector_noise=0.0, ageing_rate=0.0,
                  drift_coefficient=np.zeros_like(profile.environment.drift_coefficient), dac_bits=24)
    return replace(profile, fabrication=fab, calibration={k: v.copy() for k, v in fab.items()}, environment=env)


# ------------------------------------------------------------------------------------------ imaging
def test_frame_shape_is_the_squarest_factorisation() -> None:
    assert frame_shape(64) == (8, 8) and frame_shape(784) == (28, 28) and frame_shape(144) == (12, 12)
    assert frame_shape(128) == (8, 16) and frame_shape(10) == (2, 5) and frame_shape(7) == (1, 7)


def test_the_sparse_imaging_operator_is_the_resampling_then_the_blur() -> None:
    shape = (6, 7)
    m = Misalignment(3.0, 0.4, -0.7, 1.05)
    # the fleets' and the mapping's sparse operator is what training's resampling does to every input pixel
    seen = resample(torch.eye(42, dtype=torch.float64), shape, torch.tensor(m.as_array())).T.numpy()
    np.testing.assert_allclose(imaging_operator(shape, m).to_dense().numpy(), seen, atol=1e-15)
    assert imaging_operator(shape, Misalignment()).to_dense().tolist() == np.eye(42).tolist()
    K = imaging_operator(shape, Misalignment(), crosstalk=0.2).to_dense().numpy()
    # light is conserved except what spills off the frame: an interior pixel's column sums to 1
    assert K[:, 3 * 7 + 3].sum() == pytest.approx(1.0) and K[:, 0].sum() == pytest.approx(1.0 - 0.1)
    assert K[3 * 7 + 3, 3 * 7 + 3] == pytest.approx(0.8) and K[3 * 7 + 4, 3 * 7 + 3] == pytest.approx(0.05)


def test_perturbation_adds_rotation_and_shift_and_multiplies_the_magnification() -> None:
    base = Misalignment(0.5, 0.1, -0.2, 1.02)
    assert perturbed(base, {"rotation_deg": 2.0}) == Misalignment(2.5, 0.1, -0.2, 1.02)
    assert perturbed(base, {"shift_y_px": 1.0}).shift_y_px == pytest.approx(0.8)
    assert perturbed(base, {"scale": 1.1}).scale == pytest.approx(1.122)
    with pytest.raises(ValueError, match="unknown perturbation axis"):
        perturbed(base, {"tilt": 1.0})


# ------------------------------------------------------------------------------------------ masks
def test_weights_to_controls_is_a_balanced_pair_in_the_training_range() -> None:
    W = np.array([[0.3, -0.9, 0.0], [1.8, -0.45, 0.2]])
    controls, clipped, scale = FS.weights_to_controls(W)
    assert clipped == 0 and controls.shape == (2, 2, 3)
    assert scale.tolist() == [1.0, 2.0]                     # 1.8 / 0.9: the second row's gain doubles
    assert controls.min() >= 0.05 - 1e-12 and controls.max() <= 0.95 + 1e-12
    realised = FS.nominal_weights(torch.from_numpy(controls), W.shape).numpy()
    np.testing.assert_allclose(realised * scale[:, None], W)
    c = torch.full((2, 2, 3), 1.4, requires_grad=False)
    FS.project(c)
    assert float(c.max()) == pytest.approx(0.95) and float(c.min()) == pytest.approx(0.95)


@pytest.fixture(scope="module")
def fs_model(tmp_path_factory):
    """A small SAT model on the free-space platform (hidden 16, 2 epochs): FD-SAT over the default box."""
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path_factory.mktemp("fs_model") / "fs.onnx"
    train_and_export("digits", TrainConfig(platform="freespace", method="sat", epochs=2, hidden=[16]), path)
    return load_model(path)


def test_exported_freespace_model_holds_its_mask_pairs_and_records_its_box(fs_model) -> None:
    assert fs_model.platform == "freespace" and fs_model.layers[0].controls.shape == (2, 16, 64)
    for layer in fs_model.layers:       # (onnxruntime parity: tests/test_platform_conformance.py)
        np.testing.assert_allclose(layer.controls[0] - layer.controls[1], layer.weight, atol=1e-6)
    config = fs_model.metadata["config"]
    assert (config["robust_rotation"], config["robust_shift"], config["robust_scale"]) == (2.0, 2.0, 0.1)


def test_zero_misalignment_on_a_perfect_setup_reproduces_the_nominal_model(fs_model) -> None:
    setup = ideal(read_profile(FS_PROFILES / "chipA.h5"))
    fleet = SimulatedFleet(fs_model, [setup], [map_model(fs_model, setup)])
    for k, layer in enumerate(fs_model.layers):
        W = fleet.realised_weights(k, slice(0, 1), Conditions())[0]
        np.testing.assert_allclose(W, layer.weight, atol=1e-6)


def test_a_90_degree_turn_of_a_square_mask_is_exact(fs_model) -> None:
    """Turning the relay by 90° moves every input pixel to its turned place: W_eff is W with its masks turned."""
    setup = ideal(read_profile(FS_PROFILES / "chipA.h5"))
    fleet = SimulatedFleet(fs_model, [setup], [map_model(fs_model, setup)])
    W0 = fleet.realised_weights(0, slice(0, 1), Conditions())[0]
    W = W0.reshape(-1, 8, 8)
    turned = fleet.realised_weights(0, slice(0, 1), Conditions(perturbation={"rotation_deg": 90.0}))[0]
    # the mask pixel (r, c) sees input (r', c') of the turned frame; the effective mask is W turned the other way
    np.testing.assert_array_equal(turned.reshape(-1, 8, 8), np.rot90(W, k=1, axes=(1, 2)))
    back = fleet.realised_weights(0, slice(0, 1), Conditions(perturbation={"rotation_deg": 360.0}))[0]
    np.testing.assert_array_equal(back, W0)


def test_the_model_file_misalignment_is_the_torch_one(fs_model) -> None:
    """The simulator's imaging (W @ M) and training's (inputs resampled) agree on a misaligned perfect setup."""
    setup = ideal(read_profile(FS_PROFILES / "chipA.h5"))
    fleet = SimulatedFleet(fs_model, [setup], [map_model(fs_model, setup)])
    m = {"rotation_deg": 3.0}
    W = fleet.realised_weights(0, slice(0, 1), Conditions(perturbation=m))[0].astype(np.float64)
    x = torch.rand(5, 64, dtype=torch.float64)
    via_torch = resample(x, (8, 8), torch.tensor([3.0, 0.0, 0.0, 1.0], dtype=torch.float64)) \
        @ torch.from_numpy(fs_model.layers[0].weight.astype(np.float64)).T
    np.testing.assert_allclose(x.numpy() @ W.T, via_torch.numpy(), atol=1e-5)


def test_mapping_pre_compensates_the_measured_misalignment() -> None:
    """Smooth masks (what a misalignment-robust model learns) are pre-compensated almost exactly; the residual the
    mapping reports is the realised error."""
    setup = ideal(read_profile(FS_PROFILES / "chipA.h5"), rotation=1.5, shift_x=0.3, scale=1.02)
    r, c = np.divmod(np.arange(64), 8)
    W = np.stack([0.8 * np.exp(-((r - 3.5 + dy) ** 2 + (c - 3.5 + dx) ** 2) / 6.0) - 0.3
                  for dy, dx in ((0, 0), (1, -1), (-1.5, 0.5), (0.5, 1.5))])
    controls = FS.weights_to_controls(W)[0]
    compensated = FS.map_layer(W, controls, setup.calibration, setup.environment, setup.shape)
    blind = FS.map_layer(W, controls, uncalibrated(setup).calibration, setup.environment, setup.shape)
    M = imaging_operator((8, 8), misalignment_of(setup.fabrication)).to_dense().numpy()

    def realised(settings):
        return (np.clip(settings, 0, 1)[0] - np.clip(settings, 0, 1)[1]) @ M

    error_blind = np.linalg.norm(realised(blind.settings) - W)
    error_comp = np.linalg.norm(realised(compensated.settings) - W)
    assert error_comp < 0.1 * error_blind, (error_comp, error_blind)
    assert compensated.residual == pytest.approx(error_comp, rel=1e-3)      # the residual is what it says


def test_cached_imaging_is_the_same_in_any_chunking_and_after_a_perturbation(fs_model) -> None:
    from pnndeploy.deploy.transfer import load_evaluation_data

    profiles = [read_profile(FS_PROFILES / f"chip{c}.h5") for c in "ABCDEFGH"]
    data = load_evaluation_data(fs_model)
    fleet = SimulatedFleet(fs_model, profiles, [map_model(fs_model, p) for p in profiles])
    whole = fleet.accuracy(data.X, data.y)
    shifted = fleet.accuracy(data.X, data.y, Conditions(perturbation={"shift_x_px": 1.0}), chunk=3)
    np.testing.assert_array_equal(fleet.accuracy(data.X, data.y, chunk=3), whole)
    fresh = SimulatedFleet(fs_model, profiles, [map_model(fs_model, p) for p in profiles])
    np.testing.assert_array_equal(fresh.accuracy(data.X, data.y, chunk=5), whole)
    assert not np.array_equal(shifted, whole)


def test_a_perturbation_of_a_ring_fleet_is_refused(tiny_export, shipped_profiles_dir) -> None:
    from pnndeploy.errors import PnnError

    model = load_model(tiny_export.path)
    chip = read_profile(shipped_profiles_dir / "chipA.h5")
    fleet = SimulatedFleet(model, [chip], [map_model(model, chip)])
    with pytest.raises(PnnError, match="no whole-setup perturbation"):
        fleet.realised_weights(0, slice(0, 1), Conditions(perturbation={"rotation_deg": 1.0}))


# ------------------------------------------------------------------------------------------ FD-SAT
def test_a_non_finite_probe_gives_no_ascent() -> None:
    adversary = MisalignmentAdversary([0, 0, 0, 1], [2, 2, 2, 0.1], rho=0.5, seed=0)
    state = adversary.state(lambda phi: float("inf") if phi[0] > 0 else 0.0)
    draw = MisalignmentAdversary([0, 0, 0, 1], [2, 2, 2, 0.1], rho=0.0, seed=0).state(lambda phi: 0.0)
    assert np.all(np.isfinite(state))
    np.testing.assert_array_equal(state, draw)


def test_fd_sat_probes_see_no_control_noise(fs_model) -> None:
    """With --noise, the probes of one step still differ only in the misalignment: the same state twice gives the
    same loss."""
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.loop import _loss_at, build_model

    model = build_model(TrainConfig(platform="freespace", method="sat", noise=0.05, hidden=[8]), 64, 10)
    model.set_control_noise(0.05)
    model.train()
    x, y = torch.rand(16, 64), torch.randint(0, 10, (16,))
    loss = torch.nn.CrossEntropyLoss()
    phi = np.array([1.0, 0.5, -0.5, 1.02])
    assert _loss_at(model, loss, x, y, phi) == _loss_at(model, loss, x, y, phi)
    assert model.training



def test_misalignment_adversary_is_a_random_state_then_a_normalised_ascent_in_the_box() -> None:
    """For a linear loss the FD estimate over one orthonormal block is exact: the state is the random draw plus
    rho half-widths along the scaled gradient, clipped to the box."""
    slope = np.array([1.0, -2.0, 0.0, 30.0])
    centre, half = np.array([0, 0, 0, 1.0]), np.array([2, 2, 2, 0.1])
    for seed in range(10):
        adversary = MisalignmentAdversary(centre, half, rho=0.5, seed=seed)
        state = adversary.state(lambda phi: float(slope @ phi))
        draw = MisalignmentAdversary(centre, half, rho=0.0, seed=seed).state(lambda phi: 0.0)
        g = half * slope
        np.testing.assert_allclose(state, np.clip(draw + 0.5 * half * g / np.linalg.norm(g), centre - half,
                                                  centre + half), atol=1e-9)
        assert np.all(np.abs(draw - centre) <= half) and slope @ state > slope @ draw
        assert adversary.evaluations == 8                   # 4 probes, central differences


def test_fd_gradient_of_the_training_loss_matches_autograd(fs_model) -> None:
    """Where bilinear resampling is differentiable, the FD estimate of the loss's misalignment gradient points where
    autograd's does."""
    from pnndeploy.data.datasets import load_dataset
    from pnndeploy.training.fd_sat import fd_gradient

    data = load_dataset("digits", seed=0)
    X = torch.from_numpy(data.scaling.apply(data.X_train[:128])).double()
    y = torch.from_numpy(data.y_train[:128])
    W = torch.from_numpy(fs_model.layers[0].weight.astype(np.float64))
    readout = torch.randn(10, W.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    scale = np.array([1.0, 0.5, 0.5, 0.05])

    def loss_t(phi: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(torch.relu(resample(X, (8, 8), phi) @ W.T) @ readout.T, y)

    phi0 = np.array([0.7, 0.23, -0.31, 1.013])
    p = torch.tensor(phi0, requires_grad=True)
    loss_t(p).backward()
    exact = p.grad.numpy() * scale                          # in the scaled coordinates
    estimate = fd_gradient(lambda phi: float(loss_t(torch.from_numpy(phi))), phi0, scale, probes=64, h=1e-4,
                           rng=np.random.default_rng(1))
    cos = estimate @ exact / np.linalg.norm(estimate) / np.linalg.norm(exact)
    assert cos > 0.99, cos


def test_cli_freespace_end_to_end(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--platform", "freespace", "--method", "standard", "--epochs", "2", "--hidden", "8",
                 "--out", "m.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["platform"] == "freespace"
    result = cli("fleet", "make", "--platform", "freespace", "--process", FS_PROFILES / "process.yaml", "--count", "2",
                 "--out", "lot", "--json")
    assert result.exit_code == 0, result.output
    assert cli("profile", "validate", "lot/chipA.h5").exit_code == 0
    result = cli("transfer", "--fleet", "--model", "m.onnx", "--profiles", "lot", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    with h5py.File(doc["devices"][0]["deployment"]) as f:
        assert f["settings/layer0"].attrs["units"] == "T" and f["settings/layer0"].shape == (2, 8, 64)
    result = cli("audit", "--device", "chipA", "--model", "m.onnx", "--profiles", "lot", "--temperature", "-0.5:0.5:0.5",
                 "--days", "0:30:30", "--draws", "1", "--threshold", "0.3", "--rotation", "-2:2:1", "--shift", "-1:1:1",
                 "--scale", "0.9:1.1:0.1", "--require-shift", "1", "--plot", "a.png", "--report", "a.md", "--json")
    assert result.exit_code in (0, 1), result.output
    audit = json.loads(result.stdout)
    assert set(audit["sweeps"]) >= {"temperature_K", "days", "rotation_deg", "shift_x_px", "shift_y_px", "scale"}
    shift = audit["sweeps"]["shift_y_px"]
    assert shift["units"] == "px" and shift["values"] == [-1.0, 0.0, 1.0] and shift["require"] == 1.0
    assert audit["require"]["rotation_deg"] == 2.0 and audit["sweeps"]["scale"]["centre"] == 1.0
    assert audit["sweeps"]["rotation_deg"]["values"] == [-2.0, -1.0, 0.0, 1.0, 2.0]
    # the unperturbed point of every axis is the temperature sweep's 0 K
    zero = audit["sweeps"]["temperature_K"]["values"].index(0.0)
    for key, centre in (("rotation_deg", 0.0), ("shift_x_px", 0.0), ("scale", 1.0)):
        sweep = audit["sweeps"][key]
        k = sweep["values"].index(centre)
        assert sweep["devices"]["chipA"][k] == audit["sweeps"]["temperature_K"]["devices"]["chipA"][zero]
    for key in ("rotation_deg", "shift_x_px", "shift_y_px", "scale"):      # each tolerance is what its sweep says
        sweep = audit["sweeps"][key]
        for name, acc in sweep["devices"].items():
            tol = audit["tolerance"][key][name]
            k0 = sweep["values"].index(sweep["centre"])
            if tol is None:
                assert acc[k0] < 0.3
                continue
            inside = [a for v, a in zip(sweep["values"], acc) if tol[0] <= v <= tol[1]]
            assert all(a >= 0.3 for a in inside) and tol[0] <= sweep["centre"] <= tol[1]
            lo, hi = sweep["values"].index(tol[0]), sweep["values"].index(tol[1])
            assert lo == 0 or acc[lo - 1] < 0.3
            assert hi == len(acc) - 1 or acc[hi + 1] < 0.3
    assert "Misalignment after calibration" in Path("a.md").read_text()
    assert Path("a.png").read_bytes().startswith(b"\x89PNG")


def test_an_audit_fails_on_misalignment_alone(cli, tmp_path, monkeypatch) -> None:
    """Every drift requirement met (0 K, 0 days), a 4 px shift required: the verdict fails and says why."""
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    monkeypatch.chdir(tmp_path)
    train_and_export("digits", TrainConfig(platform="freespace", method="standard", epochs=3, hidden=[16]), "m.onnx")
    result = cli("audit", "--device", "chipA", "--model", "m.onnx", "--profiles", FS_PROFILES, "--temperature", "0:0:1",
                 "--require-temperature", "0", "--days", "0:0:1", "--require-days", "0", "--draws", "1",
                 "--threshold", "0.5", "--shift", "-4:4:4", "--require-shift", "4", "--rotation", "0:0:1",
                 "--require-rotation", "0", "--scale", "1:1:1", "--require-scale", "0", "--json")
    assert result.exit_code == 1, result.output
    failures = json.loads(result.stdout)["failures"]
    assert sorted(failures) == ["chipA: below 0.500 within ±4 px of shift along x",
                                "chipA: below 0.500 within ±4 px of shift along y"]


# ------------------------------------------------------------------------------------------ bad input
def _edited(tmp_path: Path, path: str, values) -> Path:
    target = tmp_path / "chipX.h5"
    shutil.copyfile(FS_PROFILES / "chipA.h5", target)
    with h5py.File(target, "r+") as f:
        attrs = dict(f[path].attrs)
        del f[path]
        f[path] = values
        f[path].attrs.update(attrs)
    return target


@pytest.mark.parametrize("path, values, fragment", [
    ("calibration/scale", np.array([-1.0]), "scale"),
    ("fabrication/rotation", np.array([90.0]), "rotation"),
    ("calibration/shift_x", np.array([np.nan]), "shift_x"),
    ("calibration/rotation", np.array([0.1, 0.2]), "expected (1,)"),
    ("calibration/pixel_gain", np.ones((2, 32, 63)), "expected (2, 32, 64)"),
])
def test_bad_misalignment_in_a_profile_is_refused_with_one_line(cli, one_line_error, tmp_path, path, values,
                                                                fragment) -> None:
    bad = _edited(tmp_path, path, values)
    one_line_error(cli("profile", "validate", bad), str(bad), fragment)


def test_bad_misalignment_process_spec_is_refused(tmp_path) -> None:
    from pnndeploy.errors import ConfigError

    text = (FS_PROFILES / "process.yaml").read_text()
    bad = tmp_path / "process.yaml"
    bad.write_text(text.replace("  rotation_sigma_deg: 0.5", "  rotation_sigma_deg: -0.5"))
    with pytest.raises(ConfigError, match="mask.rotation_sigma_deg.*standard deviation"):
        load_process(bad)
    bad.write_text("".join(line for line in text.splitlines(keepends=True) if "shift_sigma_px" not in line))
    with pytest.raises(ConfigError, match="mask.shift_sigma_px.*missing"):
        load_process(bad)


@pytest.mark.parametrize("args, fragments", [
    (("--require-scale", "1.5"), ("--require-scale", "magnification")),
    (("--scale", "-1:1:0.5"), ("--scale", "magnification")),
    (("--rotation", "2:1:0.5"), ("--rotation", "LO <= HI")),
    (("--require-rotation", "nan"), ("finite",)),
])
def test_bad_misalignment_sweeps_are_refused_with_one_line(cli, one_line_error, tmp_path, fs_model, args,
                                                           fragments) -> None:
    one_line_error(cli("audit", "--fleet", "--model", fs_model.path, "--profiles", FS_PROFILES, *args), *fragments)


def test_misalignment_sweeps_of_a_ring_model_are_refused(cli, one_line_error, model_file, shipped_profiles_dir) -> None:
    one_line_error(cli("audit", "--fleet", "--model", model_file, "--profiles", shipped_profiles_dir,
                       "--require-shift", "1"), "--require-shift", "mrr chips have none")


@pytest.mark.parametrize("args, fragments", [
    (("--robust-shift", "1"), ("--robust-shift", "--platform mrr has no such axis")),
    (("--platform", "freespace", "--method", "standard", "--robust-rotation", "1"), ("--method standard",)),
    (("--platform", "freespace", "--method", "sat", "--robust-scale", "0.7"), ("--robust-scale", "below 0.5")),
    (("--platform", "freespace", "--method", "sat", "--robust-shift", "-1"), ("--robust-shift", "0 or more")),
])
def test_bad_fd_sat_settings_are_refused_with_one_line(cli, one_line_error, tmp_path, args, fragments) -> None:
    one_line_error(cli("train", *args, "--epochs", "1", "--out", tmp_path / "m.onnx"), *fragments)
    assert not (tmp_path / "m.onnx").exists()


def test_in_situ_fd_sat_is_refused(cli, one_line_error, tmp_path) -> None:
    one_line_error(cli("train", "--platform", "freespace", "--method", "sat", "--in-situ", "chipA", "--in-situ-profiles",
                       FS_PROFILES, "--epochs", "1", "--out", tmp_path / "m.onnx"), "--in-situ", "misalign")
    assert not (tmp_path / "m.onnx").exists()


def test_ring_model_files_do_not_record_a_misalignment_box() -> None:
    from pnndeploy.training.config import TrainConfig

    for method in ("standard", "sat", "spec-sat"):
        assert not {"robust_rotation", "misalignment_rho"} & set(TrainConfig(method=method).to_dict())
    assert "robust_shift" not in TrainConfig(platform="freespace", method="standard").to_dict()
    assert TrainConfig(platform="freespace", method="sat").to_dict()["robust_shift"] == 2.0        # the paper's box
    assert TrainConfig(platform="freespace", method="spec-sat").to_dict()["robust_shift"] == pytest.approx(1.005,
                                                                                                        abs=1e-3)
