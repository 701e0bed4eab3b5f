"""The MZI platform's options (issue 23, part 1): ``modes`` (the mesh size) and ``detection`` (coherent, the weight
matrix Re U; intensity, the paper's |U x|^2 normalised).  The conformance suite runs the intensity read-out
through every check a platform passes (gradients, fleets bit for bit, mapping, ONNX against onnxruntime); here:
the options themselves, the physics of the read-out, old model files, and the one-line refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from pnndeploy.deploy.mapping import check_compatible
from pnndeploy.errors import ConfigError, ModelFileError, ProfileError
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.formats.process_spec import check_process, load_process, process_platform
from pnndeploy.platforms import get_platform, platform_for
from pnndeploy.platforms.base import ChipState
from pnndeploy.platforms.mesh import TWO_PI, mesh_layout, mesh_unitary, mzi_count, phase_count
from pnndeploy.platforms.mzi import MZIPlatform
from pnndeploy.platforms.mzi_intensity import MZIIntensityPlatform
from pnndeploy.simulation.fabrication import generate_chip
from pnndeploy.training.config import TrainConfig, load_config
from pnndeploy.training.pipeline import train_and_export

REPO = Path(__file__).resolve().parents[1]
INTENSITY6 = Path(__file__).parent / "data" / "processes" / "mzi6-intensity.yaml"
MZI_PROFILES = REPO / "device_profiles" / "mzi"


def intensity_mesh(modes: int) -> MZIIntensityPlatform:
    platform = get_platform("mzi").configure({"modes": modes, "detection": "intensity"})
    assert isinstance(platform, MZIIntensityPlatform)
    return platform


@pytest.fixture(scope="module")
def intensity_model(tmp_path_factory) -> Path:
    """iris 4 -> 6 -> 3 on 6-mode meshes read by intensity, two epochs of SAT."""
    path = tmp_path_factory.mktemp("mzi-intensity") / "model.onnx"
    train_and_export("iris", TrainConfig(platform="mzi", method="sat", epochs=2, hidden=[6], seed=0,
                                         platform_options={"modes": "6", "detection": "intensity"}), path)
    return path


def _with_params(path: Path, out: Path, edit) -> Path:
    """A copy of the model file whose platform_params are ``edit(params)``."""
    proto = onnx.load(str(path))
    for entry in proto.metadata_props:
        if entry.key == "pnndeploy.platform_params":
            entry.value = json.dumps(edit(json.loads(entry.value)))
    onnx.save(proto, str(out))
    return out


# ------------------------------------------------------------------------------------------ the options
def test_the_options_are_typed_checked_and_pick_the_read_out() -> None:
    mzi = get_platform("mzi")
    assert isinstance(mzi, MZIPlatform) and mzi.option_values() == {"modes": 16, "detection": "coherent"}
    mesh = mzi.configure({"modes": "64", "detection": "intensity"})
    assert isinstance(mesh, MZIIntensityPlatform) and not mesh.linear and mesh.name == "mzi"
    assert mesh.option_values() == {"modes": 64, "detection": "intensity"}
    back = mesh.configure({"detection": "coherent"})
    assert type(back) is MZIPlatform and back.linear and back.modes == 64
    assert mzi.modes == 16 and type(mzi) is MZIPlatform          # configuring never changes the registry's
    for values, fragment in (({"modes": 1}, "from 2 to 256"), ({"modes": "x"}, "an integer"),
                             ({"modes": 512}, "from 2 to 256"), ({"detection": "phase"}, "coherent, intensity"),
                             ({"pixels": 3}, "no such option")):
        with pytest.raises(ConfigError, match=fragment):
            TrainConfig(platform="mzi", platform_options=values)


def test_the_model_file_records_the_options(intensity_model: Path) -> None:
    model = load_model(intensity_model)
    assert model.platform == "mzi"
    assert model.platform_params["modes"] == 6 and model.platform_params["detection"] == "intensity"
    platform = platform_for(model.platform, model.platform_params)
    assert isinstance(platform, MZIIntensityPlatform) and platform.modes == 6
    assert [layer.controls.shape for layer in model.layers] == [(36,), (36,)]


def test_old_model_files_load_as_the_coherent_16_mode_mesh(intensity_model: Path, tmp_path: Path) -> None:
    """Files written before the options recorded modes 16 and a description of the coherent read-out, or
    (older) no modes at all: both are the coherent 16-mode mesh."""
    for params in ({"modes": 16, "detection": "coherent (W = Re U)"}, {}):
        platform = platform_for("mzi", {"splitter_ratio": 0.5, "control_units": "rad", **params})
        assert type(platform) is MZIPlatform and platform.option_values() == {"modes": 16, "detection": "coherent"}
    # a coherent file of today, stripped of both options, loads and gives the same logits
    path = tmp_path / "coherent.onnx"
    train_and_export("iris", TrainConfig(platform="mzi", method="standard", epochs=1, hidden=[4], seed=0), path)
    old = _with_params(path, tmp_path / "old.onnx",
                       lambda p: {k: v for k, v in p.items() if k not in ("modes", "detection")})
    X = np.random.default_rng(0).uniform(0, 1, (5, 4))
    np.testing.assert_array_equal(load_model(old).logits(X), load_model(path).logits(X))
    with pytest.raises(ModelFileError, match="platform_params.detection"):
        load_model(_with_params(path, tmp_path / "bad.onnx", lambda p: {**p, "detection": "holographic"}))


# ------------------------------------------------------------------------------------------ the physics
def test_bar_state_mesh_reads_the_inputs_own_powers() -> None:
    """Every MZI in its bar state (theta = pi) and no phases elsewhere: U is diagonal with unit-modulus entries,
    so port k reads x_k^2; the scores are those powers over their L2 norm, the first out ports."""
    mesh = intensity_mesh(6)
    m = mzi_count(6)
    controls = torch.zeros(phase_count(6), dtype=torch.float64)
    controls[:m] = np.pi
    U = mesh_unitary(controls, 6)
    np.testing.assert_allclose(np.abs(U.numpy()), np.eye(6), atol=1e-12)
    x = torch.tensor([[0.3, -1.2, 0.5, 2.0, 0.0, 0.7]], dtype=torch.float64)
    powers = x[0] ** 2
    got = mesh.forward(controls, x, (4, 6))[0]
    np.testing.assert_allclose(got.numpy(), (powers / torch.linalg.vector_norm(powers))[:4].numpy(), atol=1e-12)


def test_outputs_are_the_normalised_port_powers_of_the_mesh_unitary() -> None:
    mesh = intensity_mesh(8)
    g = torch.Generator().manual_seed(3)
    controls = mesh.init_controls((5, 7), g).double()
    x = torch.randn(11, 7, generator=g, dtype=torch.float64)
    U = mesh_unitary(controls, 8).numpy()
    ports = np.abs(x.numpy() @ U[:, :7].T) ** 2                   # |U x|^2 on all 8 ports
    expected = ports[:, :5] / np.linalg.norm(ports, axis=1, keepdims=True)
    np.testing.assert_allclose(mesh.forward(controls, x, (5, 7)).numpy(), expected, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(mesh.nominal_outputs(None, controls.numpy(), (5, 7), x.numpy()), expected, rtol=1e-10)
    # the read-out does not depend on the light's power, and no light gives zeros, not NaN
    np.testing.assert_allclose(mesh.forward(controls, 7.5 * x, (5, 7)).numpy(), expected, rtol=1e-9)
    dark = torch.zeros(2, 7, dtype=torch.float64, requires_grad=True)
    out = mesh.forward(controls.requires_grad_(True), dark, (5, 7))
    assert torch.equal(out, torch.zeros(2, 5, dtype=torch.float64))
    out.sum().backward()                    # and no NaN in the gradients either (training through a dark sample)
    assert torch.isfinite(dark.grad).all() and torch.isfinite(controls.grad).all()


@pytest.mark.parametrize("ideal", [True, False])
def test_a_lossless_mesh_conserves_power(ideal: bool) -> None:
    """Sum over all N ports of |U x|^2 = |x|^2: 50:50 couplers, and couplers of any splitting ratio (each
    coupler is lossless, whatever it splits), at random phases."""
    n = 16
    rng = np.random.default_rng(1)
    phases = torch.from_numpy(rng.uniform(0, TWO_PI, phase_count(n)))
    ratios = None if ideal else torch.from_numpy(np.clip((1 + 0.15 * rng.standard_normal((mzi_count(n), 2))) / 2,
                                                         1e-3, 1 - 1e-3))
    U = mesh_unitary(phases, n, ratios).numpy()
    x = rng.standard_normal((20, n))
    ports = np.abs(x @ U.T) ** 2
    np.testing.assert_allclose(ports.sum(1), (x ** 2).sum(1), rtol=1e-12)
    assert len(mesh_layout(n)[0]) == mzi_count(n)


def test_a_fleets_read_out_is_the_same_bits_whatever_its_passes(monkeypatch) -> None:
    """The fleet realises its meshes a pass at a time (:func:`~pnndeploy.platforms.mesh.meshes_per_pass`): every
    chip's port powers are the bits of one pass of all chips, whatever the pass size."""
    import pnndeploy.platforms.mzi_intensity as module

    platform = intensity_mesh(6)
    process = load_process(INTENSITY6)
    chips = [generate_chip(process, f"chipP{k}", seed=3) for k in range(5)]
    rng = np.random.default_rng(2)
    settings = [rng.uniform(0, 2 * np.pi, platform.control_shape((3, 4))) for _ in chips]
    state = platform.fleet_layer((3, 4), settings, chips, chips[0].shape)
    x = torch.from_numpy(rng.random((4, 7))).float()
    conditions = ChipState(torch.tensor(0.4))
    outputs = []
    for per_pass in (10 ** 6, 2, 1):
        monkeypatch.setattr(module, "meshes_per_pass", lambda n, kernel=False, per_pass=per_pass: per_pass)
        outputs.append(platform.fleet_forward(state, slice(0, 5), x, conditions))
    assert all(torch.equal(outputs[0], other) for other in outputs[1:]) and outputs[0].shape == (5, 3, 7)
    assert platform.fleet_forward(state, slice(2, 2), x, conditions).shape == (0, 3, 7)       # no chips: none


def test_a_64_mode_mapping_is_the_same_bits_on_one_thread_or_two() -> None:
    """The residual of a 64-mode mesh's mapping sums 64 x 64 x 64 port forms: split over two threads that sum
    rounded otherwise (seen: 0.11982067278614034 against ...32); the whole mapping now runs on one intra-op
    thread, so settings and residual are the same on any number of threads."""
    platform = intensity_mesh(64)
    chip = generate_chip(load_process(REPO / "examples" / "paper" / "mzi64-process.yaml"), "chipM0", seed=1)
    controls = np.random.default_rng(0).uniform(0, 2 * np.pi, platform.control_shape((10, 64)))
    previous, mapped = torch.get_num_threads(), []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            mapped.append(platform.map_layer(None, controls, chip.calibration, chip.environment, chip.shape,
                                             platform.metadata(), (10, 64)))
    finally:
        torch.set_num_threads(previous)
    assert np.array_equal(mapped[0].settings, mapped[1].settings) and mapped[0].residual == mapped[1].residual


@pytest.mark.parametrize("n, in_f", [(6, 4), (16, 16), (65, 7)])
def test_the_port_losss_gradient_by_hand_is_autograds(n: int, in_f: int) -> None:
    """The fit's loss sum_k ||form_k - target_k||^2 and its gradient in every phase, by the mesh's sweeps
    (complex_loss_and_gradient with _port_loss), against autograd through mesh_unitary; meshes of a batch with
    their own couplers; 65 modes takes the elementwise backward sweep."""
    from pnndeploy.platforms.mesh_jacobian import complex_loss_and_gradient
    from pnndeploy.platforms.mzi_intensity import _port_forms, _port_loss

    g = torch.Generator().manual_seed(n)
    phases = torch.rand(3, n * n, dtype=torch.float64, generator=g) * TWO_PI
    ratios = 0.5 + 0.05 * torch.randn(3, mzi_count(n), 2, dtype=torch.float64, generator=g)
    target = _port_forms(mesh_unitary(torch.rand(3, n * n, dtype=torch.float64, generator=g) * TWO_PI, n)[..., :in_f])
    loss, grad = complex_loss_and_gradient(phases, n, ratios, lambda U: _port_loss(U, target, in_f))
    x = phases.clone().requires_grad_(True)
    reference = ((_port_forms(mesh_unitary(x, n, ratios)[..., :in_f]) - target) ** 2).sum((-3, -2, -1))
    reference.sum().backward()
    torch.testing.assert_close(loss, reference.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, x.grad, rtol=1e-9, atol=1e-10 * float(x.grad.abs().max()))


def test_the_onnx_layer_is_the_nominal_read_out_in_onnxruntime() -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    mesh = intensity_mesh(6)
    controls = mesh.init_controls((4, 5), torch.Generator().manual_seed(2)).double().numpy()
    nodes, inits = mesh.onnx_layer("mesh", None, controls, (4, 5), "x", "y")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(4).uniform(-1, 1, (9, 5)).astype(np.float32)
    got = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, mesh.nominal_outputs(None, controls, (4, 5), x.astype(np.float64)), atol=2e-6)


# ------------------------------------------------------------------------------------------ refusals
def test_a_layer_larger_than_the_mesh_is_one_line(cli, one_line_error, tmp_path: Path) -> None:
    result = cli("train", "--platform", "mzi", "--platform-option", "modes=4", "--platform-option",
                 "detection=intensity", "--dataset", "iris", "--hidden", "6", "--epochs", "1",
                 "--out", tmp_path / "m.onnx")
    one_line_error(result, "does not fit one 4-mode mesh", "4 -> 6")


def test_an_unknown_detection_is_one_line(cli, one_line_error, tmp_path: Path) -> None:
    result = cli("train", "--platform", "mzi", "--platform-option", "detection=phase", "--dataset", "iris",
                 "--epochs", "1", "--out", tmp_path / "m.onnx")
    one_line_error(result, "detection", "coherent, intensity")


def test_a_chip_of_other_options_is_refused_in_one_line(intensity_model: Path, cli, one_line_error,
                                                         tmp_path: Path) -> None:
    model = load_model(intensity_model)
    process = load_process(INTENSITY6)
    check_compatible(model, generate_chip(process, "chipA", seed=0))          # its own chips: fine
    coherent = {**process, "options": {"modes": 6, "detection": "coherent"}}
    with pytest.raises(ProfileError, match="has detection coherent but the model was trained for intensity"):
        check_compatible(model, generate_chip(coherent, "chipC", seed=0))
    chip = generate_chip(process, "chipB", seed=0)
    with pytest.raises(ProfileError, match="has modes 16 modes but the model was trained for 6"):
        check_compatible(model, dataclasses.replace(chip, options={"modes": 16, "detection": "intensity"}))
    # the default MZI fleet (16 modes, coherent) through the CLI
    one_line_error(cli("transfer", "--fleet", "--model", intensity_model, "--profiles", MZI_PROFILES, "--no-save"),
                   "modes 16", "trained for 6")


def test_a_process_whose_array_is_not_its_mesh_size_is_refused() -> None:
    process = load_process(INTENSITY6)
    with pytest.raises(ConfigError, match="a mesh of 8 modes is not one of modes=6"):
        check_process({**process, "array": {"rows": 8, "cols": 8}})


# ------------------------------------------------------------------------------------------ the paper's set-up
def test_the_papers_mzi_config_and_process_spec_are_the_64_mode_intensity_mesh() -> None:
    settings = load_config(REPO / "examples" / "paper" / "mzi.yaml")
    assert settings.pop("dataset") == "digits28" and settings.pop("out")
    config = TrainConfig(**settings)
    platform = config.chip_platform
    assert isinstance(platform, MZIIntensityPlatform) and platform.modes == 64
    assert config.conv == [6, 16] and config.kernel == 5 and config.batch_norm
    assert config.hidden == [120, 64] and config.onchip == 1
    platform.control_shape((10, 64))                                   # the last layer, 64 -> 10, is one mesh
    process = load_process(REPO / "examples" / "paper" / "mzi64-process.yaml")
    assert process_platform(process).option_values() == platform.option_values()
    assert process["mzi"]["splitter_error_sigma"] == process["mzi"]["phase_error_sigma_rad"] == 0.15
