"""What every platform must pass: one parametrised suite (scikit-learn's ``parametrize_with_checks`` is the model).

Adding a platform is its module, its process.yaml and one line in :data:`CASES`; the suite then checks, through
the optical-layer interface only:

* the nominal layer is differentiable, and its gradient is the finite-difference one (controls and inputs);
* a chip gives the same outputs, bit for bit, alone or in a fleet (on the CPU), under drift and detector noise;
* a chip whose calibration is its truth realises what the mapping aimed at (the nominal model's outputs);
* the settings alone (in-situ training's) are the mapping's, bit for bit;
* the exported ONNX file runs in onnxruntime to pnndeploy's own nominal outputs and to the trained model's;
* a profile survives write, read and validate; a damaged one is refused with one line and exit 2;
* the process spec dry-runs, and a spec missing a key of the device section is refused naming it;
* the shipped fleet is its process.yaml regenerated (platforms that ship one).

Beside the shipped platforms at their defaults, a case may set platform options (its process spec says the same
under ``options:``): the MZI mesh read by intensity (``detection=intensity``, a non-linear readout) runs here on a
6-mode mesh.  A platform written only for this suite would be registered through ``Case.make``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np
import pytest
import torch

from pnndeploy.compute import Compute
from pnndeploy.data.datasets import load_dataset
from pnndeploy.deploy.mapping import map_model
from pnndeploy.errors import ConfigError
from pnndeploy.formats.onnx_io import load_model, onnx_logits
from pnndeploy.formats.process_spec import check_process, load_process
from pnndeploy.formats.profile_schema import validate_profile
from pnndeploy.formats.profiles import read_profile, write_profile
from pnndeploy.platforms import PLATFORMS, get_platform, platform_for
from pnndeploy.simulation.fabrication import generate_chip, make_fleet
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "device_profiles"
TEST_PROCESSES = Path(__file__).parent / "data" / "processes"


def _full_extinction(profile: Any) -> Any:
    """Rings with full extinction (a = 1): with a < 1 a weight near -1 is out of a ring's reach and is clipped."""
    return replace(profile, fabrication={**profile.fabrication, "a": np.ones_like(profile.fabrication["a"])})


def _nominal_setup(profile: Any) -> Any:
    """A free-space setup without misalignment (its mapping pre-compensates imaging only approximately) and with
    pixels of full gain (one that transmits less than it should cannot reach the top of the pair's range)."""
    fab = {k: v.copy() for k, v in profile.fabrication.items()}
    fab["pixel_gain"][:] = 1.0
    for key in ("rotation", "shift_x", "shift_y"):
        fab[key][:] = 0.0
    fab["scale"][:] = 1.0
    return replace(profile, fabrication=fab)


def _aligned_lossless_masks(profile: Any) -> Any:
    """Diffractive masks without transmission loss (a phase setting cannot make up lost amplitude) and in place
    (the mapping pre-compensates a misalignment only up to the interpolation of a resampled mask)."""
    fab = {k: v.copy() for k, v in profile.fabrication.items()}
    fab["transmission"][:] = 1.0
    for key in ("rotation", "shift_x", "shift_y"):
        fab[key][:] = 0.0
    return replace(profile, fabrication=fab)


@dataclass(frozen=True)
class Case:
    """One platform under test: where its process spec is, what it ships, and a small model to train on it."""

    name: str
    process: Path
    shipped: Path | None = None          # folder of the shipped fleet (regenerated from ``process``)
    dataset: str = "digits"
    hidden: tuple[int, ...] = (8,)
    onchip: int = 0                      # only the last N layers on the chip (0: all)
    make: Callable[[], Any] | None = None  # a platform not in pnndeploy's registry
    #: The chip made perfect for the mapping check, beyond calibration = truth, no noise and no crosstalk.
    perfect: Callable[[Any], Any] = lambda profile: profile
    #: How far (relative to the largest logit) a perfectly calibrated chip may be from the nominal model: what
    #: the mapping cannot reach on this platform and reports as its residual.
    tolerance: float = 2e-3
    #: Platform options making the layer small enough for a finite-difference gradient check.
    small: tuple[tuple[str, Any], ...] = ()
    #: Platform options the model is trained for (the process spec's ``options:`` say the same of its chips).
    options: tuple[tuple[str, Any], ...] = ()
    #: The (out, in) layer of the gradient check.
    grad_shape: tuple[int, int] = (4, 16)
    #: The case's id when a platform is tested with several sets of options.
    label: str = ""

    def __str__(self) -> str:
        return self.label or self.name


CASES = [
    Case("mrr", SHIPPED / "process.yaml", SHIPPED, perfect=_full_extinction),
    # a mesh of imperfect couplers cannot realise every unitary: the fit leaves a residual (reported)
    Case("mzi", SHIPPED / "mzi" / "process.yaml", SHIPPED / "mzi", tolerance=3e-2),
    Case("freespace", SHIPPED / "freespace" / "process.yaml", SHIPPED / "freespace", perfect=_nominal_setup),
    # the paper's read-out: one mesh per layer, |U x|^2 normalised (a 4 -> 6 -> 3 network on 6-mode meshes); its
    # imperfect couplers cannot realise every port's power either: the fit leaves a residual (reported)
    Case("mzi", TEST_PROCESSES / "mzi6-intensity.yaml", dataset="iris", hidden=(6,), label="mzi-intensity",
         options=(("modes", 6), ("detection", "intensity")), grad_shape=(5, 4), tolerance=1e-2),
    # the digits' 8 x 8 frame straight onto the masks (64 x 64 pixels), ten detectors
    Case("d2nn", SHIPPED / "d2nn" / "process.yaml", SHIPPED / "d2nn", hidden=(), perfect=_aligned_lossless_masks,
         small=(("grid", 16),)),
]


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The suite's own platforms in pnndeploy's registry for this module (one line each, as a new platform's)."""
    with pytest.MonkeyPatch.context() as patch:
        for case in CASES:
            if case.make is not None:
                patch.setitem(PLATFORMS, case.name, case.make())
        yield


@pytest.fixture(scope="module", params=CASES, ids=str)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def process(case: Case) -> dict:
    return load_process(case.process)


@pytest.fixture(scope="module")
def trained(case: Case, tmp_path_factory):
    """A model trained for two epochs on the platform (spec-sat needs a default fleet: sat for the others)."""
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    method = "spec-sat" if case.shipped is not None else "sat"
    path = tmp_path_factory.mktemp(f"conformance-{case}") / "model.onnx"
    settings = {"robust_to": str(case.process)} if method == "spec-sat" else {}
    summary, result = train_and_export(case.dataset, TrainConfig(platform=case.name, method=method, epochs=2,
                                                                 hidden=list(case.hidden), onchip=case.onchip,
                                                                 seed=0, platform_options=dict(case.options),
                                                                 **settings), path)
    return load_model(path), result


def _chips(process: dict, count: int = 3) -> list:
    return [generate_chip(process, f"chip{'ABCDEFGH'[k]}", seed=0) for k in range(count)]


# ------------------------------------------------------------------------------------------- the layer
def test_the_layer_gradient_is_the_finite_difference_one(case: Case) -> None:
    platform = get_platform(case.name).configure({**dict(case.options), **dict(case.small)})
    shape = case.grad_shape
    g = torch.Generator().manual_seed(0)
    controls = platform.init_controls(shape, g).double().requires_grad_(True)
    x = torch.rand(3, shape[1], generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda c, v: platform.forward(c, v, shape), (controls, x),
                                    eps=1e-6, atol=1e-5, rtol=1e-4)


def test_the_exported_file_runs_in_onnxruntime_to_pnndeploys_outputs(trained) -> None:
    model, result = trained
    data = load_dataset(model.dataset, seed=0)
    raw = data.X_test[:40]
    ours = model.logits(model.scaling.apply(raw))
    scale = float(np.abs(ours).max())
    np.testing.assert_allclose(onnx_logits(model.path, raw), ours, atol=2e-4 * scale)
    with torch.no_grad():
        trained_logits = result.model(torch.from_numpy(model.scaling.apply(raw))).double().numpy()
    np.testing.assert_allclose(ours, trained_logits, atol=2e-4 * scale)


# ------------------------------------------------------------------------------------------- the fleet
def test_a_chip_gives_the_same_outputs_alone_or_in_a_fleet(trained, process) -> None:
    """Each chip has its own product of the same shape in any batch, its own noise stream and physics that rounds
    the same wherever it falls in a batch: its outputs do not depend on the chips evaluated with it, nor on the
    threads sharing the work, under drift, detector noise and a whole-setup perturbation (80 chips on 3 and 5
    threads: enough elements for torch to split the elementwise work between threads)."""
    model, _ = trained
    N = 80
    pool = _chips(process, 6)
    mapped = [map_model(model, chip) for chip in pool]
    chips = [replace(pool[k % 6], device_id=f"chip{k:02d}") for k in range(N)]     # own names: own noise
    deployments = [mapped[k % 6] for k in range(N)]
    X = model.scaling.apply(load_dataset(model.dataset, seed=0).X_test[:50])
    platform = platform_for(model.platform, model.platform_params)
    perturbation = {axis.name: axis.centre + 0.3 for axis in platform.perturbation_axes} or None
    temperatures = np.linspace(-1.0, 1.3, N)

    def conditions(dT: Any) -> Conditions:
        return Conditions(delta_T=dT, eval_seed=3, perturbation=perturbation)

    alone = np.stack([SimulatedFleet(model, chips[k:k + 1], deployments[k:k + 1], Compute("cpu", 1)).scores(
        X, conditions(float(temperatures[k])), slice(0, 1))[0] for k in range(N)])
    for threads, part in ((3, slice(0, N)), (5, slice(1, N)), (3, slice(3, N - 4))):
        fleet = SimulatedFleet(model, chips, deployments, Compute("cpu", threads))
        got = fleet.scores(X, conditions(temperatures), part)
        differ = [k + part.start for k in range(len(got)) if not np.array_equal(got[k], alone[k + part.start])]
        assert differ == [], f"on {threads} threads chips {differ} give other bits than alone"
    if platform.linear:         # every weight, where a bit that moves is seen before any product averages it
        for layer in range(len(model.layers)):
            weights = SimulatedFleet(model, chips, deployments, Compute("cpu", 3)).realised_weights(
                layer, slice(0, N), conditions(temperatures))
            for k in range(N):
                single = SimulatedFleet(model, chips[k:k + 1], deployments[k:k + 1], Compute("cpu", 1))
                np.testing.assert_array_equal(
                    weights[k], single.realised_weights(layer, slice(0, 1), conditions(float(temperatures[k])))[0])
    together = alone
    assert np.abs(together[0] - together[6]).max() > 0          # the chips differ (not a vacuous equality)


def test_a_layer_state_split_into_truth_and_settings_is_the_whole_one(trained, process) -> None:
    """fleet_programmed(fleet_truth(...), settings) is fleet_layer(...), tensor for tensor and bit for bit: a
    simulated chip re-programmed in situ keeps the truth's part and must compute what a fresh layer computes."""
    model, _ = trained
    chips = _chips(process, 2)
    platform = platform_for(model.platform, model.platform_params)
    for k, layer in enumerate(model.layers):
        settings = [map_model(model, chip).layers[k].settings for chip in chips]
        shape, layout = layer.weight_shape, chips[0].shape
        whole = platform.fleet_layer(shape, settings, chips, layout, "cpu", torch.float64)
        split = platform.fleet_programmed(platform.fleet_truth(shape, chips, layout, "cpu", torch.float64), settings)
        assert split.keys() == whole.keys()
        for name, value in whole.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(split[name], value), f"layer {k}: {name} differs"


def test_a_chip_calibrated_to_its_truth_realises_the_nominal_model(case: Case, trained, process) -> None:
    model, _ = trained
    chip = case.perfect(_chips(process, 1)[0])
    chip = replace(chip, calibration={k: v.copy() for k, v in chip.fabrication.items()},
                   environment=replace(chip.environment, detector_noise=0.0, crosstalk=0.0, dac_bits=24))
    deployment = map_model(model, chip)
    X = model.scaling.apply(load_dataset(model.dataset, seed=0).X_test[:50])
    fleet = SimulatedFleet(model, [chip], [deployment])
    realised = fleet.logits(X, Conditions(), slice(0, 1))[0]
    nominal = model.logits(X)
    scale = float(np.abs(nominal).max())
    assert np.abs(realised - nominal).max() < case.tolerance * scale, case.name
    assert (realised.argmax(1) == nominal.argmax(1)).mean() > 0.95
    assert deployment.clipped == 0
    if fleet.platform.linear:       # the residual the mapping reports is what the chip realises
        for k, layer in enumerate(model.layers):
            W = fleet.realised_weights(k, slice(0, 1), Conditions())[0].astype(np.float64)
            assert np.linalg.norm(W - layer.weight) == pytest.approx(deployment.layers[k].residual, rel=1e-3,
                                                                      abs=1e-4)


def test_layer_settings_are_the_mappings_settings(trained, process) -> None:
    """What in-situ training programs at every step (the settings alone, without the mapping's report) is the
    mapping's settings, bit for bit, on a chip of the platform's process (faulty rings, padding rows and the other
    odd chips of a ring lot: tests/test_mapping.py)."""
    model, _ = trained
    chip = _chips(process, 1)[0]
    platform = platform_for(model.platform, model.platform_params)
    for layer in model.layers:
        args = (layer.weight, layer.controls, chip.calibration, chip.environment, chip.shape, model.platform_params,
                layer.shape)
        settings, mapped = platform.layer_settings(*args), platform.map_layer(*args)
        assert settings.shape == mapped.settings.shape and settings.dtype == mapped.settings.dtype
        assert np.ascontiguousarray(settings).tobytes() == np.ascontiguousarray(mapped.settings).tobytes()


def test_drift_moves_a_chip_and_the_platform_says_by_how_much(trained, process) -> None:
    """Every control device shifts by its own k * dT: a temperature offset changes the outputs, and a control
    shift of exactly k * dT on every device is the same thing."""
    model, _ = trained
    chip = _chips(process, 1)[0]
    fleet = SimulatedFleet(model, [chip], [map_model(model, chip)])
    X = model.scaling.apply(load_dataset(model.dataset, seed=0).X_test[:30])
    # a temperature that moves every control by at least 1 % of its range (a diffractive plate drifts little per K)
    lo, hi = fleet.platform.control_range
    dT = max(0.4, 0.01 * (hi - lo) / abs(fleet.platform.nominal_drift))
    warm = fleet.scores(X, Conditions(delta_T=dT), slice(0, 1))
    shift = (dT * chip.environment.drift_coefficient)[None]
    shifted = fleet.scores(X, Conditions(control_shift=shift), slice(0, 1))
    tolerance = 1e-4 * float(np.abs(warm).max())
    np.testing.assert_allclose(warm, shifted, atol=tolerance)
    assert np.abs(warm - fleet.scores(X, Conditions(), slice(0, 1))).max() > 10 * tolerance


# --------------------------------------------------------------------------------------- profiles, specs
def test_a_profile_survives_write_read_and_validate(process, tmp_path) -> None:
    chip = _chips(process, 1)[0]
    path = tmp_path / "chipA.h5"
    write_profile(chip, path)
    again = read_profile(path)
    assert validate_profile(path) == []
    assert again.platform == chip.platform and again.shape == chip.shape
    for part in ("fabrication", "calibration"):
        for key, value in getattr(chip, part).items():
            np.testing.assert_array_equal(getattr(again, part)[key], value)
    np.testing.assert_array_equal(again.environment.drift_coefficient, chip.environment.drift_coefficient)


def test_a_damaged_profile_is_refused_in_one_line(case: Case, process, tmp_path, cli, one_line_error) -> None:
    platform = get_platform(case.name)
    path = tmp_path / "chipA.h5"
    write_profile(_chips(process, 1)[0], path)
    with h5py.File(path, "r+") as f:
        field = f[f"calibration/{platform.offset_name}"]
        field[(0,) * field.ndim] = np.nan
    one_line_error(cli("profile", "validate", path), str(path), platform.offset_name)
    with h5py.File(path, "r+") as f:
        attrs = dict(f["environment/drift_coefficient"].attrs)
        del f["environment/drift_coefficient"]
        f["environment/drift_coefficient"] = np.zeros(3)
        f["environment/drift_coefficient"].attrs.update(attrs)
    one_line_error(cli("profile", "validate", path), str(path), "drift_coefficient")


def test_the_process_spec_dry_runs_and_a_missing_key_is_named(case: Case, process) -> None:
    platform = get_platform(case.name)
    assert check_process(process)["platform"] == case.name
    section = dict(process[platform.device_section])
    missing = sorted(section)[0]
    del section[missing]
    with pytest.raises(ConfigError, match=missing):
        check_process({**process, platform.device_section: section})


def test_the_shipped_fleet_is_its_process_spec_regenerated(case: Case, process, tmp_path) -> None:
    if case.shipped is None:
        pytest.skip(f"{case.name} ships no fleet")
    shipped = sorted(case.shipped.glob("chip*.h5"))
    assert len(shipped) == 8
    make_fleet(process, len(shipped), "chip", 0, tmp_path)
    for path in shipped:
        again, original = read_profile(tmp_path / path.name), read_profile(path)
        for part in ("fabrication", "calibration"):
            for key, value in getattr(original, part).items():
                np.testing.assert_array_equal(getattr(again, part)[key], value)


def test_shipped_process_spec_is_the_package_copy(case: Case) -> None:
    """spec-sat outside a checkout reads the package's copy of the default fleet's process spec."""
    if case.shipped is None:
        pytest.skip(f"{case.name} ships no fleet")
    copy = REPO / "pnndeploy" / "platforms" / "processes" / f"{case.name}.yaml"
    assert copy.read_text() == case.process.read_text()


def test_the_suite_holds_every_registered_platform() -> None:
    assert {c.name for c in CASES if c.make is None} == set(PLATFORMS) - {c.name for c in CASES if c.make}
    assert any(not get_platform(c.name).configure(dict(c.options)).linear for c in CASES)   # beyond a weight matrix


@pytest.mark.parametrize("grid", ["x", None, [1], 600, True, 48])
def test_a_non_linear_model_file_with_hostile_platform_params_is_one_line(grid, tmp_path) -> None:
    """The loader rebuilds a non-linear layer's operator from the file: bad platform parameters are a
    ModelFileError (one line, exit 2), never a traceback or a huge allocation."""
    import json as _json

    import onnx

    from pnndeploy.errors import ModelFileError
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path / "d2nn.onnx"
    train_and_export("digits", TrainConfig(platform="d2nn", method="standard", epochs=1,
                                           platform_options={"grid": 16}), path)
    proto = onnx.load(str(path))
    for prop in proto.metadata_props:
        if prop.key == "pnndeploy.platform_params":
            prop.value = _json.dumps({**_json.loads(prop.value), "grid": grid})
    onnx.save(proto, str(path))
    with pytest.raises(ModelFileError, match="grid|controls"):
        load_model(path)


def test_labels_of_any_integer_type_score_the_same() -> None:
    from pnndeploy.simulation.fleet import correct_fraction

    scores = torch.randn(40, 10, 30, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (30,), generator=torch.Generator().manual_seed(1))
    for dtype in (torch.uint8, torch.int16, torch.int32):
        assert torch.equal(correct_fraction(scores, y.to(dtype)), correct_fraction(scores, y))
    assert torch.isnan(correct_fraction(torch.zeros(3, 10, 0), y[:0])).all()
