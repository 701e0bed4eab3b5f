"""Mapping logical weights onto one chip: tiling, DAC quantisation, calibration only, deployment files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest

from pnndeploy import __version__
from pnndeploy.deploy.mapping import map_model
from pnndeploy.platforms.base import quantise
from pnndeploy.deploy.transfer import load_evaluation_data
from pnndeploy.errors import PnnError, ProfileError
from pnndeploy.formats.deployments import (
    Deployment,
    LayerDeployment,
    deployment_path,
    read_deployment,
    write_deployment,
)
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.mrr import _neighbour_settings
from pnndeploy.platforms.tiling import ring_index
from pnndeploy.simulation.fabrication import generate_chip
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet

MRR = get_platform("mrr")


@pytest.fixture(scope="module")
def model(tiny_export):
    return load_model(tiny_export.path)


@pytest.fixture(scope="module")
def chip(shipped_process):
    """A simulated 16 x 16 chip (seed 1), in memory."""
    return generate_chip(shipped_process, "chipA", 1)


def _step(profile) -> float:
    lo, hi = profile.environment.heater_range
    return (hi - lo) / (2 ** profile.environment.dac_bits - 1)


# ------------------------------------------------------------------------------------------ tiling


def test_ring_index_tiles_a_layer_larger_than_the_array() -> None:
    ri, ci = ring_index((7, 10), (3, 4))
    assert ri.shape == ci.shape == (7, 10)
    for o in range(7):
        for i in range(10):
            assert (ri[o, i], ci[o, i]) == (o % 3, i % 4), (o, i)
    # one ring holds weights of several tiles: ring (1, 2) holds (1, 2), (4, 6), (1, 6), (4, 2), ...
    assert set(zip(*np.nonzero((ri == 1) & (ci == 2)))) == {(o, i) for o in (1, 4) for i in (2, 6)}


def test_ring_index_small_layer_uses_the_top_left_rings() -> None:
    ri, ci = ring_index((2, 5), (16, 16))
    np.testing.assert_array_equal(ri, np.repeat(np.arange(2)[:, None], 5, axis=1))
    np.testing.assert_array_equal(ci, np.repeat(np.arange(5)[None, :], 2, axis=0))


# ------------------------------------------------------------------------------------------ DAC


def test_quantise_puts_values_on_the_dac_grid_and_flags_out_of_range() -> None:
    lo, hi, bits = -1.0, 2.0, 3
    step = (hi - lo) / (2 ** bits - 1)
    settings = np.concatenate([np.linspace(-1.7, 2.6, 211), [lo, hi, 0.0]])
    q, inside = quantise(settings, (lo, hi), bits)
    codes = (q - lo) / step
    np.testing.assert_allclose(codes, np.round(codes), atol=1e-9)          # k integer
    assert codes.min() >= -1e-9 and codes.max() <= 2 ** bits - 1 + 1e-9    # k in [0, 2^bits - 1]
    np.testing.assert_array_equal(inside, (settings >= lo) & (settings <= hi))
    assert inside[-3] and inside[-2]                                        # the ends are in range
    # inside: the nearest grid point
    grid = lo + step * np.arange(2 ** bits)
    nearest = grid[np.argmin(np.abs(settings[:, None] - grid[None, :]), axis=1)]
    np.testing.assert_allclose(q[inside], nearest[inside], atol=1e-12)
    assert np.all(np.abs(q[inside] - settings[inside]) <= step / 2 + 1e-12)
    # outside: clamped to the nearer end
    np.testing.assert_allclose(q[settings < lo], lo)
    np.testing.assert_allclose(q[settings > hi], hi)
    assert (~inside).sum() == (settings < lo).sum() + (settings > hi).sum() > 0


# ------------------------------------------------------------------------------------------ calibration only


def test_mapper_ignores_the_fabrication_truth(model, chip) -> None:
    base = map_model(model, chip)
    wild = {k: v * 7.0 + 3.0 for k, v in chip.fabrication.items()}   # nothing like the real chip
    for other in (replace(chip, fabrication=wild), replace(chip, fabrication=None)):
        mapped = map_model(model, other)
        for a, b in zip(base.layers, mapped.layers):
            np.testing.assert_array_equal(a.settings, b.settings)
            assert a.clipped == b.clipped


def _detuning(settings: np.ndarray, profile, calibration=None) -> np.ndarray:
    """The detuning the *calibrated* model of the chip realises at ``settings``: h + r_hat + crosstalk (h_l + h_r)."""
    cal = profile.calibration if calibration is None else calibration
    ri, ci = ring_index(settings.shape, profile.shape)
    return settings + cal["resonance_offset"][ri, ci] + profile.environment.crosstalk * _neighbour_settings(
        settings, ci, profile.shape)


def test_calibration_offset_shifts_the_settings_the_other_way(model, chip) -> None:
    """Offsets measured d higher: settings lower (by d / (1 + 2 crosstalk) inside a bank row, which the
    neighbours' lower settings make up) and the calibrated detunings the same, to the DAC's resolution."""
    d = 0.1
    cal = dict(chip.calibration, resonance_offset=chip.calibration["resonance_offset"] + d)
    base, shifted = map_model(model, chip), map_model(model, replace(chip, calibration=cal))
    step = _step(chip)
    lo, hi = chip.environment.heater_range
    for a, b in zip(base.layers, shifted.layers):
        usable = (a.settings > lo + 2 * d) & (a.settings < hi - 2 * d)
        assert usable.mean() > 0.9
        diff = b.settings[usable] - a.settings[usable]
        assert np.all(diff < -d / 2)
        gap = _detuning(b.settings, chip, cal) - _detuning(a.settings, chip)
        assert np.all(np.abs(gap[usable]) <= 2 * step), np.abs(gap[usable]).max()


def test_calibrated_width_scales_the_detuning(model, chip) -> None:
    """x* = gamma_hat * u(W): a 10 % wider measured ring needs a 10 % larger detuning."""
    cal = dict(chip.calibration, gamma=chip.calibration["gamma"] * 1.1)
    base, wider = map_model(model, chip), map_model(model, replace(chip, calibration=cal))
    step = _step(chip)
    for k, (a, b) in enumerate(zip(base.layers, wider.layers)):
        lo, hi = chip.environment.heater_range
        usable = (b.settings > lo) & (b.settings < hi) & (a.settings > lo) & (a.settings < hi)
        assert usable.mean() > 0.9
        x_a, x_b = _detuning(a.settings, chip)[usable], _detuning(b.settings, chip)[usable]
        # each detuning is off by up to (1 + 2 crosstalk) half DAC steps
        assert np.all(np.abs(x_b - 1.1 * x_a) <= 2.1 * 1.04 * step / 2 + 1e-12), k
        assert np.abs(x_b - x_a).max() > 10 * step                   # the width really mattered


def _ideal_chip(chip):
    """Calibration equal to the truth, full extinction, no crosstalk, no noise."""
    fab = {k: v.copy() for k, v in chip.fabrication.items()}
    fab["a"] = np.ones_like(fab["a"])
    env = replace(chip.environment, crosstalk=0.0, detector_noise=0.0)
    return replace(chip, fabrication=fab, calibration={k: v.copy() for k, v in fab.items()}, environment=env)


def test_ideal_chip_realises_the_weights_within_the_dac_resolution(model, chip) -> None:
    ideal = _ideal_chip(chip)
    deployment = map_model(model, ideal)
    assert deployment.clipped == 0
    fleet = SimulatedFleet(model, [ideal], [deployment])
    step = _step(ideal)
    for k, layer in enumerate(model.layers):
        ri, ci = ring_index(layer.weight.shape, ideal.shape)
        gamma, a = ideal.fabrication["gamma"][ri, ci], ideal.fabrication["a"][ri, ci]
        max_slope = float(np.max(3 * np.sqrt(3) / 4 * a / gamma))   # |dW/dx| at x = gamma/sqrt(3)
        realised = fleet.realised_weights(k, slice(0, 1), Conditions())[0]
        err = np.abs(realised.astype(np.float64) - layer.weight.astype(np.float64))
        assert err.max() <= max_slope * step / 2 + 1e-4, err.max()
        assert err.max() > 0                                          # really went through the DAC
    data = load_evaluation_data(model)
    nominal = float((model.logits(data.X).argmax(1) == data.y).mean())
    acc = fleet.accuracy(data.X, data.y)[0]
    assert abs(acc - nominal) <= 1.0 / data.y.size + 1e-12, (acc, nominal)


def test_platform_mismatch_is_refused(model, chip) -> None:
    with pytest.raises(ProfileError, match="mzi"):
        map_model(model, replace(chip, platform="mzi"))


# ------------------------------------------------------------------------------------------ files


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")      # the float32 chip's 2a, on purpose
def test_a_lot_of_ring_chips_maps_as_stacks_with_each_chips_own_bits(shipped_process, monkeypatch) -> None:
    """map_fleet_layer maps chips of one environment as a stack: each chip's settings, clipping counts and
    residual are map_layer's bit for bit (and layer_settings gives its settings alone), whatever it is stacked
    with: faulty rings, offsets of exactly 0, a heater range from 0, no crosstalk or less of it, another DAC, a
    float32 calibration (other stacks: the same arithmetic), unprogrammed rows, stacks cut short, an empty
    layer."""
    monkeypatch.setattr("pnndeploy.platforms.mrr.MAP_STACK", 3)
    rng = np.random.default_rng(7)
    chips = [generate_chip(shipped_process, f"c{k}", k) for k in range(11)]
    calibrations = [dict(c.calibration) for c in chips]
    environments = [c.environment for c in chips]
    calibrations[1]["faulty"] = (rng.random(chips[1].shape) < 0.08).astype(np.uint8)
    calibrations[2]["resonance_offset"] = np.zeros(chips[2].shape)
    calibrations[8]["a"] = calibrations[8]["a"].astype(np.float32)     # float32 arithmetic: its 2a overflows
    calibrations[8]["a"][0, 0] = 2e38                                  # where a float64 stack's would not
    environments[3] = replace(environments[3], heater_range=(0.0, 3.0))
    environments[4] = environments[6] = replace(environments[4], crosstalk=0.0)
    environments[5] = replace(environments[5], dac_bits=environments[5].dac_bits - 2)
    environments[7] = replace(environments[7], crosstalk=environments[7].crosstalk / 2)
    for shape, unprogrammed in (((30, 20), None), ((10, 30), 4), ((16, 16), 0), ((0, 7), None)):
        weight = rng.uniform(-1.1, 1.05, shape)                 # some beyond reach
        if unprogrammed is not None:
            weight[unprogrammed] = np.nan
        controls = rng.uniform(-2.5, 2.5, shape).astype(np.float32)
        controls[:1, :3] = [-0.0, 0.0, -0.0]
        fleet = MRR.map_fleet_layer(weight, controls, calibrations, environments, chips[0].shape, None, shape)
        for k, chip in enumerate(chips):
            alone = MRR.map_layer(weight, controls, calibrations[k], environments[k], chip.shape, None, shape)
            assert _bits(fleet[k].settings) == _bits(alone.settings), (shape, k)
            # in-situ training's settings without the report: the same bits
            settings = MRR.layer_settings(weight, controls, calibrations[k], environments[k], chip.shape, None, shape)
            assert _bits(settings) == _bits(alone.settings) and settings.shape == alone.settings.shape \
                and settings.dtype == alone.settings.dtype, (shape, k)
            assert fleet[k].clipping == alone.clipping and (fleet[k].clipping.total > 0 or not shape[0])
            assert _bits(np.float64(fleet[k].residual)) == _bits(np.float64(alone.residual))
        assert fleet[1].clipping.faulty > 0 or not shape[0]
        # each chip's settings hold no other chip's (a stack kept alive by one chip's deployment, or aliased)
        assert all(m.settings.base is None or m.settings.base.size == m.settings.size for m in fleet)


def test_clipping_of_each_counts_every_chip_of_a_stack_as_of_counts_one() -> None:
    from pnndeploy.platforms.base import Clipping

    rng = np.random.default_rng(3)
    reachable, inside = rng.random((5, 4, 6)) < 0.8, rng.random((5, 4, 6)) < 0.7
    faulty = rng.random((5, 4, 1)) < 0.3                        # broadcast over a row, as unprogrammed rows are
    for masks in ((reachable, inside, faulty), (reachable, None, None), (reachable, inside, None)):
        expected = [Clipping.of(24, *(None if m is None else m[k] for m in masks)) for k in range(5)]
        assert Clipping.of_each(24, *masks) == expected
        assert Clipping.of_each(24, *(None if m is None else m[:1] for m in masks)) == expected[:1]


def test_deployment_round_trip(tmp_path: Path, model_file: Path, chip) -> None:
    model = load_model(model_file)
    deployment = map_model(model, chip)
    path = write_deployment(deployment, deployment_path(model_file, chip.device_id, tmp_path / "deployments"))
    assert path == tmp_path / "deployments" / "M@chipA.h5"
    back = read_deployment(path)
    assert back.device_id == "chipA"
    assert back.model_sha256 == model.sha256 == hashlib.sha256(model_file.read_bytes()).hexdigest()
    assert back.calibration_measured_at == chip.calibration_measured_at == "2026-11-01T09:00:00+00:00"
    assert back.tool_version == __version__
    assert back.control_units == "nm"
    assert back.array == chip.shape
    assert back.model_path == str(model_file)
    assert back.created == deployment.created
    assert [layer.name for layer in back.layers] == [layer.name for layer in deployment.layers]
    for a, b in zip(deployment.layers, back.layers):
        np.testing.assert_array_equal(a.settings, b.settings)
        assert a.clipped == b.clipped
    with h5py.File(path, "r") as f:
        assert f.attrs["model_sha256"] == model.sha256
        for name, ds in f["settings"].items():
            assert ds.attrs["units"] == "nm", name
    assert sorted(os.listdir(path.parent)) == ["M@chipA.h5"]       # no temp file left


def test_deployment_keeps_the_layer_order_beyond_ten_layers(tmp_path: Path) -> None:
    layers = [LayerDeployment(f"layer{k}", np.full((2, 3), float(k)), k) for k in range(12)]
    deployment = Deployment("chipA", "0" * 64, "m.onnx", "2026-11-01T09:00:00+00:00", (16, 16), layers,
                            control_units="nm")
    back = read_deployment(write_deployment(deployment, tmp_path / "m@chipA.h5"))
    assert [layer.name for layer in back.layers] == [f"layer{k}" for k in range(12)]
    assert [float(layer.settings[0, 0]) for layer in back.layers] == [float(k) for k in range(12)]


def test_deployment_path_rule_and_names() -> None:
    assert deployment_path("models/sat.onnx", "chipB") == Path("deployments") / "sat@chipB.h5"
    assert deployment_path(Path("a/b/m.v2.onnx"), "lot7-A", "out") == Path("out") / "m.v2@lot7-A.h5"
    for bad in ("a/b", "../x", "..", "a\\b", ""):
        with pytest.raises(PnnError):
            deployment_path("models/m.onnx", bad)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, model, chip) -> None:
    target = tmp_path / "m@chipA.h5"
    good = map_model(model, chip)
    write_deployment(good, target)
    before = target.read_bytes()
    twice = LayerDeployment("layer0", np.zeros((2, 2)), 0)
    broken = replace(good, layers=[twice, twice])                   # same dataset name twice: h5py fails
    with pytest.raises(Exception):
        write_deployment(broken, target)
    assert target.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m@chipA.h5"]


def test_unreadable_deployment_is_a_pnn_error(tmp_path: Path) -> None:
    path = tmp_path / "m@chipA.h5"
    path.write_text("not hdf5")
    with pytest.raises(PnnError, match="pnndeploy transfer"):
        read_deployment(path)


# ------------------------------------------------------------------ crosstalk pre-compensation, clip causes


def _crosstalk_chip(chip, crosstalk: float):
    """The chip as its calibration says it is (truth = calibration), with the given heater crosstalk and no noise."""
    cal = {k: v.copy() for k, v in chip.calibration.items()}
    fab = dict({k: v.copy() for k, v in chip.fabrication.items()}, **cal)
    env = replace(chip.environment, crosstalk=crosstalk, detector_noise=0.0)
    return replace(chip, fabrication=fab, calibration=cal, environment=env)


def test_precompensated_settings_realise_the_wanted_detunings_through_the_chips_crosstalk(model, chip) -> None:
    """Passed through the simulation's own crosstalk (fleet_layer), the settings give x* = inverse(W) to the DAC's
    resolution wherever the weight is in reach and the setting in range."""
    import torch

    xt = _crosstalk_chip(chip, 0.05)
    deployment = map_model(model, xt)
    step = _step(xt)
    for k, layer in enumerate(model.layers):
        ri, ci = ring_index(layer.weight.shape, xt.shape)
        cal = {name: xt.calibration[name][ri, ci] for name in ("gamma", "a")}
        wanted, reachable = MRR.inverse(layer.weight.astype(np.float64), np.where(layer.controls < 0, -1.0, 1.0),
                                        np.inf, **cal)
        state = MRR.fleet_layer(layer.weight.shape, [deployment.layers[k].settings], [xt], xt.shape,
                                dtype=torch.float64)
        x = state["static"][0].numpy()
        lo, hi = xt.environment.heater_range
        settable = reachable & (np.abs(deployment.layers[k].settings) < hi - step)
        assert settable.mean() > 0.5
        err = np.abs(x - wanted)[settable]
        assert err.max() <= (1 + 2 * 0.05) * step / 2 + 1e-9, err.max()
        # what the mapping did before: each ring's own setting only, the neighbours' heat on top
        uncompensated = quantise(wanted - xt.calibration["resonance_offset"][ri, ci], (lo, hi),
                                 xt.environment.dac_bits)[0]
        before = uncompensated + xt.calibration["resonance_offset"][ri, ci] + 0.05 * _neighbour_settings(
            uncompensated, ci, xt.shape)
        assert np.abs(before - wanted)[settable].max() > 20 * step


def test_crosstalk_precompensation_lowers_the_residual(model, chip) -> None:
    xt = _crosstalk_chip(chip, 0.05)
    compensated = map_model(model, xt)
    # the settings of a mapping that ignores crosstalk (zero crosstalk gives today's settings), on the same chip
    ignored = map_model(model, replace(xt, environment=replace(xt.environment, crosstalk=0.0)))
    for k, layer in enumerate(model.layers):
        ri, ci = ring_index(layer.weight.shape, xt.shape)
        cal = {name: xt.calibration[name][ri, ci] for name in ("gamma", "a")}
        W = MRR.transfer(_detuning(ignored.layers[k].settings, xt), **cal)
        residual_ignored = float(np.linalg.norm(W - layer.weight.astype(np.float64)))
        assert compensated.layers[k].residual < residual_ignored / 2, (compensated.layers[k].residual,
                                                                        residual_ignored)


def test_zero_crosstalk_gives_the_uncompensated_settings_exactly(model, chip) -> None:
    """Without crosstalk the mapping is x* - r_hat quantised, as before pre-compensation, bit for bit."""
    none = replace(chip, environment=replace(chip.environment, crosstalk=0.0))
    deployment = map_model(model, none)
    for k, layer in enumerate(model.layers):
        ri, ci = ring_index(layer.weight.shape, chip.shape)
        cal = {name: chip.calibration[name][ri, ci] for name in ("gamma", "a")}
        target, reachable = MRR.inverse(layer.weight.astype(np.float64), np.where(layer.controls < 0, -1.0, 1.0),
                                        np.inf, **cal)
        settings, inside = quantise(target - chip.calibration["resonance_offset"][ri, ci],
                                    chip.environment.heater_range, chip.environment.dac_bits)
        np.testing.assert_array_equal(deployment.layers[k].settings, settings)
        assert deployment.layers[k].clipped == int((~(reachable & inside)).sum())


def test_clip_causes_reach_and_range_add_up(chip) -> None:
    """W = -1 on a ring of extinction 0.9 is out of reach; a ring whose offset leaves the heater short is out of
    range; a weight both out of reach and out of range counts once, as reach."""
    layout = (2, 4)
    cal = {"gamma": np.full(layout, 0.15), "a": np.ones(layout), "resonance_offset": np.zeros(layout)}
    cal["a"][0, 0] = cal["a"][1, 3] = 0.9
    cal["resonance_offset"][1, 1] = -2.9      # x* = 0.26 nm needs h = 3.16 nm, beyond +3
    cal["resonance_offset"][1, 3] = 3.5       # out of reach (W = -1, a = 0.9) and out of range
    weight = np.full(layout, 0.5)
    weight[0, 0] = weight[1, 3] = -1.0
    for crosstalk in (0.0, 0.05):
        env = replace(chip.environment, crosstalk=crosstalk)
        mapped = MRR.map_layer(weight, np.ones(layout), cal, env, layout)
        c = mapped.clipping
        assert (c.devices, c.reach, c.range, c.faulty) == (8, 2, 1, 0), crosstalk
        assert c.total == mapped.clipped == 3
        doc = c.to_json()
        assert doc["fraction"] == {"reach": 0.25, "range": 0.125, "faulty": 0.0, "total": 0.375}


def test_deployment_file_keeps_the_clip_causes(tmp_path: Path, model, chip) -> None:
    deployment = map_model(model, chip)
    back = read_deployment(write_deployment(deployment, tmp_path / "M@chipA.h5"))
    assert [layer.clipping for layer in back.layers] == [layer.clipping for layer in deployment.layers]
    assert back.clipping == deployment.clipping and back.clipping.total == deployment.clipped
    old = tmp_path / "old.h5"                  # a file written before the causes were recorded
    write_deployment(replace(deployment, layers=[replace(layer, clipping=None) for layer in deployment.layers]), old)
    assert read_deployment(old).clipping is None and read_deployment(old).clipped == deployment.clipped


def test_ring_indices_are_read_only_and_kept_for_small_layers_only():
    from pnndeploy.platforms.tiling import CACHED_WEIGHTS

    small, again = ring_index((7, 10), (3, 4)), ring_index((7, 10), (3, 4))
    assert small[0] is again[0] and not small[0].flags.writeable and not small[1].flags.writeable
    side = int(CACHED_WEIGHTS ** 0.5) + 1                          # above the limit: made anew, never kept
    big, again = ring_index((side, side), (16, 16)), ring_index((side, side), (16, 16))
    assert big[0] is not again[0] and np.array_equal(big[1], again[1]) and not big[1].flags.writeable


def test_quantise_takes_scalars_and_integers_as_it_takes_arrays():
    from pnndeploy.platforms.base import quantise

    values = np.array([-3.5, -0.0, 0.0, 0.3, 2.9999, 3.0, 7.0])
    codes, inside = quantise(values, (-3.0, 3.0), 12)
    for k, v in enumerate(values):
        one, ok = quantise(float(v), (-3.0, 3.0), 12)
        assert float(one) == codes[k] and bool(ok) == inside[k]
    assert float(quantise(1, (0, 3), 2)[0]) == 1.0
