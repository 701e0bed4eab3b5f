"""The diffractive network (d2nn): its optics, its misalignment and mapping, and platform options end to end.

What every platform passes (gradients, ONNX, fleets, profiles) is the conformance suite's; here: the physics
identities of this platform and what its options mean for a model and a chip.
"""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

from pnndeploy.errors import ConfigError, ProfileError
from pnndeploy.formats.process_spec import check_process, load_process
from pnndeploy.platforms import get_platform, platform_for
from pnndeploy.platforms.d2nn import MASKS, detector_rows, inverse_misalignment, misaligned
from pnndeploy.simulation.fabrication import generate_chip

SMALL = {"grid": 16}


@pytest.fixture(scope="module")
def small():
    return get_platform("d2nn").configure(SMALL)


def test_ten_detectors_sit_3_4_3_as_lin_et_al_place_them(small) -> None:
    assert detector_rows(10) == [3, 4, 3]
    assert detector_rows(4) == [2, 2] and detector_rows(1) == [1]
    from pnndeploy.platforms.d2nn import _layout

    _, _, R = _layout(64, 28, 10)
    assert R.shape == (64 * 64, 10)
    assert np.all(R.sum(axis=0) == R.sum(axis=0)[0]) and R.sum(axis=0)[0] > 0     # equal squares
    assert R.sum(axis=1).max() == 1                                              # no pixel in two detectors


def test_a_lossless_setup_conserves_power_until_the_aperture_cuts_it(small) -> None:
    """Phase masks and band-limited propagation of a field that stays inside the apertures lose no power: the
    detectors' plane holds at most the input's power, and nothing when the input is dark."""
    platform = get_platform("d2nn").configure({"grid": 32, "distance_um": 20.0})
    g = torch.Generator().manual_seed(0)
    controls = platform.init_controls((4, 16), g).double()
    x = torch.rand(3, 16, generator=g, dtype=torch.float64)
    field = platform._input_field(x, (4, 16), torch.complex128)
    H, _ = platform._operators((4, 16), "cpu", torch.complex128)
    out = platform._propagate(field, H)
    before, after = (f.abs().pow(2).sum(dim=(-2, -1)) for f in (field, out))
    assert torch.all(after <= before * (1 + 1e-9)) and torch.all(after > 0.9 * before)
    assert torch.equal(platform.forward(controls, torch.zeros(2, 16, dtype=torch.float64), (4, 16)),
                       torch.zeros(2, 4, dtype=torch.float64))


def test_a_quarter_turn_of_a_mask_is_a_permutation_and_zero_is_exact(small) -> None:
    g = torch.Generator().manual_seed(1)
    mask = torch.polar(torch.ones(16, 16, dtype=torch.float64), torch.rand(16, 16, generator=g, dtype=torch.float64))
    assert misaligned(mask, 0.0, 0.0, 0.0) is mask
    turned = misaligned(mask, 90.0, 0.0, 0.0)
    assert torch.allclose(turned, torch.rot90(mask, k=1, dims=(0, 1)), atol=1e-12) \
        or torch.allclose(turned, torch.rot90(mask, k=-1, dims=(0, 1)), atol=1e-12)
    shifted = misaligned(mask, 0.0, 1.0, 0.0)           # one pixel along x: a column moves, the first goes dark
    assert torch.allclose(shifted[:, 1:], mask[:, :-1], atol=1e-12) and torch.all(shifted[:, 0] == 0)


def test_the_inverse_misalignment_undoes_a_rotation_and_shift() -> None:
    yy, xx = torch.meshgrid(torch.arange(32.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64),
                            indexing="ij")
    phase = 2.0 * torch.sin(2 * torch.pi * xx / 16) * torch.cos(2 * torch.pi * yy / 20)     # a smooth pattern
    mask = torch.polar(torch.ones_like(phase), phase)
    inner = (slice(4, -4), slice(4, -4))
    for move in ((0.7, 0.4, -0.3), (-1.5, 0.0, 0.8)):
        back = misaligned(misaligned(mask, *inverse_misalignment(*move)), *move)
        left = (misaligned(mask, *move) - mask)[inner].abs().mean()
        # what remains is the blur of two bilinear interpolations, a fraction of the misalignment's own error
        assert (back - mask)[inner].abs().mean() < 0.5 * left
    assert inverse_misalignment(*inverse_misalignment(0.7, 0.4, -0.3)) == pytest.approx((0.7, 0.4, -0.3))


def test_mapping_pre_compensates_the_measured_misalignment() -> None:
    """A setup whose masks sit rotated and shifted, measured exactly: the mapping's settings put the trained
    pattern back where training had it (its residual a fraction of doing nothing)."""
    platform = get_platform("d2nn").configure({"grid": 32})
    process = {**load_process("device_profiles/d2nn/process.yaml"), "array": {"rows": 32, "cols": 32},
               "options": {**load_process("device_profiles/d2nn/process.yaml")["options"], "grid": 32}}
    chip = generate_chip(check_process(process), "chipA", seed=0)
    cal = {k: v.copy() for k, v in chip.fabrication.items()}
    cal["transmission"][:] = 1.0
    cal["rotation"][:] = [0.8, -0.6]
    cal["shift_x"][:] = [0.5, 0.2]
    env = replace(chip.environment, dac_bits=16)
    g = torch.Generator().manual_seed(3)
    smooth = torch.nn.functional.interpolate(torch.rand(MASKS, 1, 6, 6, generator=g, dtype=torch.float64),
                                             size=(32, 32), mode="bilinear", align_corners=True)[:, 0]
    controls = (3.0 * smooth).numpy()
    mapped = platform.map_layer(None, controls, cal, env, (32, 32), None, (10, 16 * 16))
    naive = dict(cal, rotation=np.zeros(2), shift_x=np.zeros(2), shift_y=np.zeros(2))
    plain = platform.map_layer(None, controls, naive, env, (32, 32), None, (10, 16 * 16))

    def error(settings: np.ndarray) -> np.ndarray:
        """|realised - trained| of each mask pixel on the real (misaligned) setup."""
        realised = np.stack([misaligned(torch.from_numpy(np.exp(1j * (settings[m] + cal["phase_offset"][m]))),
                                        *(torch.tensor(float(cal[k][m])) for k in ("rotation", "shift_x", "shift_y")))
                             .numpy() for m in range(MASKS)])
        return np.abs(realised - np.exp(1j * controls))

    # the inner pixels (the edges lose light to the rotation whatever the settings)
    assert error(mapped.settings)[:, 4:-4, 4:-4].mean() < 0.3 * error(plain.settings)[:, 4:-4, 4:-4].mean()
    # the residual the mapping reports is what this (calibrated = true) setup realises
    assert mapped.residual == pytest.approx(float(np.linalg.norm(error(mapped.settings))), rel=1e-6)
    assert mapped.clipped == 0


# ------------------------------------------------------------------------------------------------ options
def test_options_are_typed_checked_and_recorded(tmp_path) -> None:
    from pnndeploy.formats.onnx_io import load_model
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    config = TrainConfig(platform="d2nn", method="standard", epochs=1, platform_options={"grid": "16"})
    assert config.platform_options == {"grid": 16} and config.hidden == []
    assert config.to_dict()["platform_options"] == {"grid": 16}
    assert "platform_options" not in TrainConfig(platform="mrr", method="standard").to_dict()
    for bad, fragment in (({"grid": "x"}, "grid=x"), ({"grid": 8}, "16 to 512"), ({"size": 3}, "no such option"),
                          ({"distance_um": -1.0}, "distance_um"),
                          # each value in bounds, together a propagation that passes only the mean field
                          ({"distance_um": 1e5}, "at most"), ({"grid": 16, "pixel_pitch_um": 0.1,
                                                               "wavelength_um": 100.0}, "wavelengths"),
                          ({"x" * 5000: 1}, "no such option")):
        with pytest.raises(ConfigError, match=fragment):
            TrainConfig(platform="d2nn", method="standard", platform_options=bad)
    with pytest.raises(ConfigError, match="no such option"):
        TrainConfig(platform="mrr", method="standard", platform_options={"grid": 16})
    path = tmp_path / "small.onnx"
    train_and_export("digits", config, path)
    model = load_model(path)
    assert model.platform_params["grid"] == 16 and model.layers[0].controls.shape == (MASKS, 16, 16)
    assert platform_for("d2nn", model.platform_params).grid == 16
    assert platform_for("d2nn", {}).grid == 64                      # a file without the option: its default


def test_a_chip_of_other_options_is_refused_in_one_line(tmp_path, cli, one_line_error) -> None:
    model = tmp_path / "small.onnx"
    assert cli("train", "--platform", "d2nn", "--method", "standard", "--epochs", "1", "--platform-option",
               "grid=16", "--out", model).exit_code == 0
    one_line_error(cli("transfer", "--model", model, "--device", "chipA", "--profiles", "device_profiles/d2nn"),
                   "grid")
    one_line_error(cli("train", "--platform", "d2nn", "--platform-option", "grid", "--out", tmp_path / "x.onnx"),
                   "KEY=VALUE")
    one_line_error(cli("train", "--platform", "d2nn", "--platform-option", "pitch=2", "--out", tmp_path / "x.onnx"),
                   "pitch", "pixel_pitch_um")
    line = one_line_error(cli("train", "--platform", "d2nn", "--platform-option", "grid=" + "9" * 4000, "--out",
                              tmp_path / "x.onnx"), "grid=")
    assert len(line) < 1000                                  # a hostile value is echoed briefly
    assert not (tmp_path / "x.onnx").exists()
    # in situ: the chip's options against the model's, before any step
    one_line_error(cli("train", "--platform", "d2nn", "--method", "standard", "--epochs", "1", "--platform-option",
                       "grid=16", "--in-situ", "chipA", "--out", tmp_path / "x.onnx"), "chipA", "grid 64")
    assert not (tmp_path / "x.onnx").exists()


def test_a_process_spec_and_a_profile_carry_the_setups_options(tmp_path, cli, one_line_error) -> None:
    process = load_process("device_profiles/d2nn/process.yaml")
    with pytest.raises(ConfigError, match="32 x 32 pixels are not grid=64"):
        check_process({**process, "array": {"rows": 32, "cols": 32}})
    unstated = {k: v for k, v in process["options"].items() if k != "grid"}
    assert generate_chip(check_process({**process, "array": {"rows": 32, "cols": 32}, "options": unstated}),
                         "chipA", seed=0).options["grid"] == 32        # an array implies its grid
    with pytest.raises(ConfigError, match="options"):
        check_process({**process, "options": {"grid": 64, "colour": "green"}})
    chip = generate_chip(process, "chipA", seed=0)
    assert chip.options["distance_um"] == process["options"]["distance_um"]
    from pnndeploy.formats.profiles import read_profile, write_profile

    path = tmp_path / "chipA.h5"
    write_profile(chip, path)
    assert read_profile(path).options == chip.options
    for value in (np.float64(-5.0), "far", np.array([1.0, 2.0])):
        with h5py.File(path, "r+") as f:
            f["options"].attrs["distance_um"] = value
        with pytest.raises(ProfileError, match="distance_um"):
            read_profile(path)
        one_line_error(cli("profile", "validate", path), "distance_um")
