"""The MZI mesh platform: mesh physics, decomposition, calibrated mapping, fleet simulation, and the CLI end to end."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from pnndeploy.deploy.mapping import map_model, uncalibrated
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.formats.process_spec import load_process
from pnndeploy.formats.profiles import read_profile
from pnndeploy.platforms import get_platform, mzi
from pnndeploy.platforms.base import ChipState
from pnndeploy.platforms.mesh import TWO_PI, decompose, mesh_layout, mzi_count, phase_count, unitary_with_real_part
from pnndeploy.platforms.mesh import mesh_unitary as mesh_unitary_torch
from pnndeploy.simulation.fabrication import generate_chip
from pnndeploy.simulation.fleet import SimulatedFleet

MZI = get_platform("mzi")
REPO = Path(__file__).resolve().parents[1]
MZI_PROFILES = REPO / "device_profiles" / "mzi"


def mesh_unitary(phases, n: int, ratios=None) -> np.ndarray:
    """The (torch) mesh unitary of numpy phases and ratios, in float64, as numpy."""
    r = None if ratios is None else torch.from_numpy(np.asarray(ratios, np.float64))
    return mesh_unitary_torch(torch.from_numpy(np.asarray(phases, np.float64)), n, r).numpy()


def haar(n: int, rng: np.random.Generator) -> np.ndarray:
    z = rng.standard_normal((n, n)) + 1j * rng.standard_normal((n, n))
    q, r = np.linalg.qr(z)
    return q * (np.diag(r) / np.abs(np.diag(r)))


def ideal_env(**changes) -> SimpleNamespace:
    return SimpleNamespace(**{"heater_range": (0.0, TWO_PI), "dac_bits": 20, "crosstalk": 0.0,
                              "detector_noise": 0.0, **changes})


# ----------------------------------------------------------------------------------------------- the mesh
def test_mesh_layout_is_the_rectangular_clements_mesh() -> None:
    for n in (2, 3, 4, 7, 16):
        col, top = mesh_layout(n)
        assert len(col) == mzi_count(n) == n * (n - 1) // 2
        assert phase_count(n) == n * n
        assert np.all(top % 2 == col % 2) and np.all(top + 1 < n) and np.all(col < n)
        assert len(set(zip(col.tolist(), top.tolist()))) == len(col)


@pytest.mark.parametrize("n", [2, 5, 16])
def test_mesh_is_unitary_at_zero_error_and_with_lossless_couplers(n: int) -> None:
    rng = np.random.default_rng(n)
    phases = rng.uniform(0, TWO_PI, (3, phase_count(n)))
    for ratios in (None, np.clip((1 + 0.3 * rng.standard_normal((3, mzi_count(n), 2))) / 2, 1e-3, 1 - 1e-3)):
        U = mesh_unitary(phases, n, ratios)
        eye = np.einsum("bij,bik->bjk", U.conj(), U)
        np.testing.assert_allclose(eye, np.broadcast_to(np.eye(n), eye.shape), atol=1e-12)


def test_one_ideal_mzi_is_the_textbook_interferometer() -> None:
    # theta = pi: full transmission to the bar port up to phases; theta = 0: full cross
    bar = mesh_unitary(np.array([np.pi, 0.0, 0.0, 0.0]), 2)
    cross = mesh_unitary(np.array([0.0, 0.0, 0.0, 0.0]), 2)
    np.testing.assert_allclose(np.abs(bar), np.eye(2), atol=1e-15)
    np.testing.assert_allclose(np.abs(cross), [[0, 1], [1, 0]], atol=1e-15)
    # a 50:50 point: theta = pi/2 splits power equally
    half = mesh_unitary(np.array([np.pi / 2, 0.3, 0.0, 0.0]), 2)
    np.testing.assert_allclose(np.abs(half) ** 2, 0.5, atol=1e-15)


def test_the_mesh_is_the_product_of_its_mzis_column_by_column() -> None:
    """U from the definition: each MZI's 2x2 matrix B(r2) diag(e^{i theta}, 1) B(r1) diag(e^{i phi}, 1) embedded
    on its mode pair, multiplied in physical order, then the output phases; batched meshes equal it one by one."""
    n = 6
    rng = np.random.default_rng(1)
    phases = rng.uniform(0, TWO_PI, (2, 3, phase_count(n)))
    ratios = np.clip((1 + 0.15 * rng.standard_normal((mzi_count(n), 2))) / 2, 1e-3, 1 - 1e-3)
    got = mesh_unitary(phases, n, ratios)
    m = mzi_count(n)
    col, top = mesh_layout(n)

    def coupler(r: float) -> np.ndarray:
        return np.array([[np.sqrt(r), 1j * np.sqrt(1 - r)], [1j * np.sqrt(1 - r), np.sqrt(r)]])

    for b, t in np.ndindex(2, 3):
        p = phases[b, t]
        U = np.eye(n, dtype=complex)
        for i in np.argsort(col, kind="stable"):
            T = coupler(ratios[i, 1]) @ np.diag([np.exp(1j * p[i]), 1]) @ coupler(ratios[i, 0]) \
                @ np.diag([np.exp(1j * p[m + i]), 1])
            E = np.eye(n, dtype=complex)
            E[top[i]:top[i] + 2, top[i]:top[i] + 2] = T
            U = E @ U
        np.testing.assert_allclose(got[b, t], np.diag(np.exp(1j * p[2 * m:])) @ U, atol=1e-13)


@pytest.mark.parametrize("n", [2, 3, 8, 16])
def test_decomposition_round_trip(n: int) -> None:
    rng = np.random.default_rng(10 + n)
    for _ in range(3):
        U = haar(n, rng)
        phases = decompose(U)
        assert phases.shape == (n * n,) and np.all((phases >= 0) & (phases < TWO_PI))
        np.testing.assert_allclose(mesh_unitary(phases, n), U, atol=1e-10)


def test_a_real_contraction_is_the_real_part_of_a_unitary() -> None:
    rng = np.random.default_rng(3)
    W = rng.uniform(-1, 1, (16, 16))
    W /= np.linalg.norm(W, 2)
    U, clipped = unitary_with_real_part(W)
    assert clipped == 0
    np.testing.assert_allclose(U.conj().T @ U, np.eye(16), atol=1e-12)
    np.testing.assert_allclose(U.real, W, atol=1e-12)
    assert unitary_with_real_part(2 * W)[1] > 0                          # singular values above 1: clipped


@pytest.mark.parametrize("shape", [(16, 16), (10, 32), (32, 64), (5, 3)])
def test_weights_to_controls_realises_any_weights_on_the_ideal_mesh(shape) -> None:
    """Decomposition round trip of a whole layer (tiled, rows rescaled into the gain): W to 1e-5."""
    W = np.random.default_rng(4).uniform(-1, 1, shape)
    controls, clipped, row_scale = MZI.weights_to_controls(W)
    assert controls.shape == MZI.control_shape(shape) and clipped == 0
    realised = MZI.nominal_weights(torch.from_numpy(controls), shape).numpy() * row_scale[:, None]
    np.testing.assert_allclose(realised, W, atol=1e-5)
    assert np.all(row_scale >= 1.0)


def test_gradient_of_the_weights_against_finite_differences() -> None:
    g = torch.Generator().manual_seed(0)
    controls = MZI.init_controls((10, 20), g).double().requires_grad_(True)
    probe = torch.randn(10, 20, generator=g, dtype=torch.float64)

    def loss(c):
        return torch.sum(probe * MZI.nominal_weights(c, (10, 20)) ** 2)

    (grad,) = torch.autograd.grad(loss(controls), controls)
    rng = np.random.default_rng(0)
    for _ in range(6):
        index = tuple(int(rng.integers(0, s)) for s in controls.shape)
        h = 1e-6
        bump = torch.zeros_like(controls)
        bump[index] = h
        fd = (loss(controls + bump) - loss(controls - bump)).item() / (2 * h)
        assert grad[index].item() == pytest.approx(fd, rel=1e-5, abs=1e-9)


# --------------------------------------------------------------------------------------------- mapping
@pytest.fixture(scope="module")
def chip():
    return generate_chip(load_process(MZI_PROFILES / "process.yaml"), "chipT", seed=7)


def _perfect(profile, **env):
    """The chip with a perfect calibration (= its truth) and the given environment changes."""
    out = copy.deepcopy(profile)
    out.calibration = copy.deepcopy(profile.fabrication)
    for key, value in env.items():
        setattr(out.environment, key, value)
    return out


def _weights(state, delta_T=0.0, shift=None):
    """W of the one chip of a fleet layer ``state`` at ``delta_T`` and control ``shift`` (no detector noise)."""
    shift = None if shift is None else torch.as_tensor(shift, dtype=torch.float32)
    return MZI.fleet_weights(state, slice(0, 1), ChipState(torch.tensor(delta_T), shift))[0].numpy()


def _realise(profile, settings, shape, delta_T=0.0):
    """W the simulated chip realises at ``settings`` (no detector noise)."""
    return _weights(MZI.fleet_layer(shape, [settings], [profile], profile.shape), delta_T)


def test_ideal_chip_realises_the_trained_weights(chip) -> None:
    ideal = copy.deepcopy(chip)
    ideal.fabrication = uncalibrated(chip).calibration
    ideal.calibration = copy.deepcopy(ideal.fabrication)
    ideal.environment.crosstalk = 0.0
    controls = MZI.init_controls((20, 24), torch.Generator().manual_seed(1))
    W = MZI.nominal_weights(controls.double(), (20, 24)).numpy()
    mapped = MZI.map_layer(W, controls.numpy(), ideal.calibration, ideal_env(), ideal.shape, MZI.metadata())
    assert mapped.residual < 1e-4 and mapped.clipped == 0
    np.testing.assert_allclose(_realise(ideal, mapped.settings, W.shape), W, atol=1e-4)


@pytest.mark.parametrize("crosstalk", [0.0, 0.01, 0.05])
def test_mapping_through_the_calibration_is_what_the_chip_realises(chip, crosstalk) -> None:
    """With calibration = truth, the map's own residual is the chip's error, crosstalk pre-compensated."""
    profile = _perfect(chip, crosstalk=crosstalk, detector_noise=0.0)
    controls = MZI.init_controls((16, 32), torch.Generator().manual_seed(2))
    W = MZI.nominal_weights(controls.double(), (16, 32)).numpy()
    mapped = MZI.map_layer(W, controls.numpy(), profile.calibration, profile.environment, profile.shape,
                           MZI.metadata())
    realised = _realise(profile, mapped.settings, W.shape)
    assert np.linalg.norm(realised - W) == pytest.approx(mapped.residual, rel=1e-3, abs=1e-4)
    naive = np.mod(controls.numpy() - profile.calibration["phase_offset"], TWO_PI)   # no fit, no compensation
    assert mapped.residual < 0.3 * np.linalg.norm(_realise(profile, naive, W.shape) - W)
    assert mapped.settings.min() >= 0.0 and mapped.settings.max() <= TWO_PI


@pytest.mark.parametrize("crosstalk", [0.01, 0.03, 0.1])
def test_crosstalk_precompensation_meets_every_target_phase(crosstalk) -> None:
    """h + c (h_left + h_right) = target (mod 2 pi) wherever the heater range allows it; the rest is counted."""
    from pnndeploy.platforms.mzi import _precompensate, _spill

    target = np.random.default_rng(6).uniform(-5, 12, (2, 3, phase_count(16)))
    for hi in (TWO_PI, TWO_PI + 1.0):
        h, unmet = _precompensate(target, crosstalk, 16, 0.0, hi)
        assert h.min() >= 0.0 and h.max() <= hi
        error = np.angle(np.exp(1j * (h + crosstalk * _spill(h, 16) - target)))
        if hi > TWO_PI:          # a turn of headroom: every target met
            assert not unmet.any()
            np.testing.assert_allclose(error, 0.0, atol=1e-9)
        elif not unmet.any():
            np.testing.assert_allclose(error, 0.0, atol=1e-9)
    assert _precompensate(target, 0.0, 16, 0.0, TWO_PI)[1].sum() == 0


def test_chips_programmed_together_get_the_settings_each_gets_alone() -> None:
    """Mapping programs a batch's chips in groups of the same crosstalk, heater range and DAC; each chip's turns
    stop on its own, so its settings and clippings are bit for bit those it gets alone (faulty shifters, a chip
    without crosstalk, a range without headroom that needs several turns)."""
    from types import SimpleNamespace

    n, chips = 16, 12
    rng = np.random.default_rng(11)
    realised = rng.uniform(-8.0, 8.0, (chips, 2, 3, phase_count(n)))
    offsets = rng.normal(0.0, 0.3, (chips, phase_count(n)))
    faulty = rng.random((chips, phase_count(n))) < 0.02
    crosstalk = np.where(np.arange(chips) % 4 == 0, 0.03, 0.01)
    crosstalk[5] = 0.0
    environments = [SimpleNamespace(heater_range=(0.0, TWO_PI + (0.05 if k % 3 else 0.0)), dac_bits=12 - k % 2)
                    for k in range(chips)]
    together, clippings = MZI._program(realised, offsets, faulty, crosstalk, environments, n)
    assert len({(float(c), e.heater_range, e.dac_bits) for c, e in zip(crosstalk, environments)}) < chips
    assert sum(c.range for c in clippings) > 0 and sum(c.faulty for c in clippings) > 0
    for k in range(chips):
        alone, (clipping,) = MZI._program(realised[k:k + 1], offsets[k:k + 1], faulty[k:k + 1], crosstalk[k:k + 1],
                                          environments[k:k + 1], n)
        assert np.array_equal(alone[0].view(np.int64), together[k].view(np.int64)) and clipping == clippings[k]
    # before quantisation too (the DAC's grid would hide a last bit): chips of one crosstalk and range, solved
    # together and alone, including chips whose turns end at different rounds
    from pnndeploy.platforms.mzi import _precompensate_chips

    broken = np.broadcast_to(faulty[:, None, None, :], realised.shape)
    wanted, unmet = _precompensate_chips(realised - offsets[:, None, None, :], 0.01, n, 0.0, TWO_PI, broken)
    for k in range(chips):
        one, one_unmet = _precompensate_chips(realised[k:k + 1] - offsets[k:k + 1, None, None, :], 0.01, n, 0.0,
                                              TWO_PI, broken[k:k + 1])
        assert np.array_equal(one[0].view(np.int64), wanted[k].view(np.int64))
        assert np.array_equal(one_unmet[0], unmet[k])


def test_corrected_phases_make_an_imperfect_mesh_realise_the_ideal_one() -> None:
    """Where every MZI's power split is within its couplers' reach the correction is exact (U, not only Re U);
    elsewhere it starts a fit far nearer than the uncorrected phases."""
    from pnndeploy.platforms.mesh import corrected_phases

    n = 8
    rng = np.random.default_rng(3)
    m = mzi_count(n)
    phases = rng.uniform(0, TWO_PI, (4, phase_count(n)))
    phases[:, :m] = rng.uniform(1.2, 1.9, (4, m))           # splits between 30:70 and 70:30: within reach
    ratios = np.clip((1 + 0.15 * rng.standard_normal((4, m, 2))) / 2, 0.42, 0.58)
    ideal = mesh_unitary(phases, n)
    np.testing.assert_allclose(mesh_unitary(corrected_phases(phases, ratios, n), n, ratios), ideal, atol=1e-10)
    np.testing.assert_allclose(corrected_phases(phases, np.full((4, m, 2), 0.5), n), np.mod(phases, TWO_PI),
                               atol=1e-9)
    phases = rng.uniform(0, TWO_PI, (4, phase_count(n)))                  # some splits out of reach
    ratios = np.clip((1 + 0.15 * rng.standard_normal((4, m, 2))) / 2, 1e-3, 1 - 1e-3)
    ideal = mesh_unitary(phases, n)
    corrected = np.linalg.norm(mesh_unitary(corrected_phases(phases, ratios, n), n, ratios) - ideal, axis=(1, 2))
    naive = np.linalg.norm(mesh_unitary(phases, n, ratios) - ideal, axis=(1, 2))
    assert np.all(corrected < 0.5 * naive)


def _pool(count: int) -> list:
    process = load_process(MZI_PROFILES / "process.yaml")
    return [generate_chip(process, f"chipF{k}", seed=11) for k in range(count)]


def _layer(shape=(16, 32), seed=3):
    controls = MZI.init_controls(shape, torch.Generator().manual_seed(seed))
    return MZI.nominal_weights(controls.double(), shape).numpy(), controls.numpy()


def test_a_fleet_mapped_at_once_is_each_chip_mapped_alone_whatever_the_batch() -> None:
    """map_fleet_layer solves every chip's blocks together; a chip's settings are map_layer's, and do not depend on
    the chips mapped with it (beyond float rounding)."""
    chips = _pool(4)
    flags = np.zeros(chips[3].calibration["phase_offset"].shape, dtype=np.uint8)
    flags[[3, 40, 77]] = 1
    chips[3] = _with_faults(chips[3], flags)            # a chip with faulty shifters must not move the others
    W, controls = _layer()
    fleet = MZI.map_fleet_layer(W, controls, [c.calibration for c in chips], [c.environment for c in chips],
                                chips[0].shape, MZI.metadata())
    other = MZI.map_fleet_layer(W, controls, [c.calibration for c in chips[2:0:-1]],
                                [c.environment for c in chips[2:0:-1]], chips[0].shape, MZI.metadata())
    for k, chip in enumerate(chips):
        alone = MZI.map_layer(W, controls, chip.calibration, chip.environment, chip.shape, MZI.metadata())
        np.testing.assert_allclose(fleet[k].settings, alone.settings, atol=1e-6)
        assert fleet[k].residual == pytest.approx(alone.residual, rel=1e-6)
        assert fleet[k].clipping == alone.clipping
    for k, mapped in zip((2, 1), other):
        np.testing.assert_allclose(mapped.settings, fleet[k].settings, atol=1e-6)
    assert not np.allclose(fleet[0].settings, fleet[1].settings)           # the chips differ


def test_mapping_batches_are_sized_by_memory() -> None:
    """Batches of chips: 512 blocks of a 16-mode mesh (its metric is most of a batch's memory), more chips of a
    layer of fewer blocks, one chip of a huge layer; a mesh fitted without a metric (above 32 modes) counts what
    its fit holds instead (not a metric it never forms); a small fleet still gives every thread a batch."""
    from pnndeploy.platforms.mzi import _map_batches

    assert _map_batches(512, 8, 16, 2) == (64, 2)                 # the benchmark's 32 x 64 layer
    assert _map_batches(512, 2, 16, 2) == (256, 2)                # its 10 x 32 layer
    assert _map_batches(512, 256, 16, 2) == (2, 2)                # a 256 x 256 layer
    assert _map_batches(10, 8, 16, 2) == (5, 2)                   # a small fleet: both threads
    assert _map_batches(3, 8, 16, 1) == (3, 1)
    assert _map_batches(512, 1536, 32, 4) == (1, 4)               # a chip above a batch (12 GiB of metrics): fitted
    #                                                               in pieces, four chips' pieces within PIECES_BYTES
    size, threads = _map_batches(512, 1, 64, 2)                   # a 64-mode mesh, no metric: many blocks a batch
    assert size >= 32 and threads == 2


def test_a_chips_mapping_does_not_depend_on_its_batch(monkeypatch) -> None:
    """Batch sizes now follow the fleet and the threads: a chip mapped in a batch of all, or alone, or in
    another order gets the same settings, residual and clipping, bit for bit (a faulty chip included)."""
    chips = _pool(4)
    flags = np.zeros(chips[2].calibration["phase_offset"].shape, dtype=np.uint8)
    flags[[3, 40]] = 1
    chips[2] = _with_faults(chips[2], flags)
    W, controls = _layer(shape=(10, 32))

    def mapped(pool):
        return MZI.map_fleet_layer(W, controls, [c.calibration for c in pool], [c.environment for c in pool],
                                   pool[0].shape, MZI.metadata())

    together = mapped(chips)
    reversed_ = mapped(chips[::-1])[::-1]
    monkeypatch.setattr(mzi, "MAP_BATCH_BYTES", 1)                  # one chip a batch
    alone = mapped(chips)
    for a, b, c in zip(together, reversed_, alone):
        for other in (b, c):
            assert np.array_equal(a.settings.view(np.int64), other.settings.view(np.int64))
            assert a.residual == other.residual and a.clipping == other.clipping


def test_a_chip_larger_than_a_batch_is_fitted_in_pieces_of_its_blocks(monkeypatch) -> None:
    """A chip whose layer alone holds more than a batch may (a 3072 x 512 layer on 32-mode meshes: 12 GiB of
    metrics) is fitted a piece of its blocks at a time: no fit holds more blocks than a piece, and every block
    gets the bits it gets when all are fitted at once (each block is its own problem), a faulty chip's too."""
    from pnndeploy.platforms import lbfgs

    chips = _pool(2)
    flags = np.zeros(chips[1].calibration["phase_offset"].shape, dtype=np.uint8)
    flags[[5, 60]] = 1
    chips[1] = _with_faults(chips[1], flags)
    W, controls = _layer(shape=(40, 48))                      # 3 x 3 blocks of a 16-mode mesh a chip

    def mapped():
        return MZI.map_fleet_layer(W, controls, [c.calibration for c in chips], [c.environment for c in chips],
                                   chips[0].shape, MZI.metadata())

    whole = mapped()
    sizes, fit = [], lbfgs.batched_lbfgs

    def spy(fun, x0, *args, **kwargs):
        sizes.append(len(x0))
        return fit(fun, x0, *args, **kwargs)

    monkeypatch.setattr(mzi, "batched_lbfgs", spy)
    monkeypatch.setattr(mzi, "MAP_BATCH_BYTES", 4 * mzi._block_bytes(16))       # a piece: 4 blocks
    assert mzi._map_batches(2, 9, 16, 1) == (1, 1)
    pieces = mapped()
    assert sizes and max(sizes) == 4 and sum(sizes) > 2 * 9      # pieces of 4 blocks (and the faulty chip's refit)
    for a, b in zip(whole, pieces):
        assert np.array_equal(a.settings.view(np.int64), b.settings.view(np.int64))
        assert a.residual == b.residual and a.clipping == b.clipping


def test_fleet_passes_cover_every_block_once_within_a_pass() -> None:
    """A fleet's meshes are realised a pass at a time: whole chips a pass, or rows of a large chip's blocks; every
    block of every chip in exactly one pass, no pass above its size unless one row of blocks is larger."""
    from pnndeploy.platforms.mzi import _passes

    for chips, to, ti, per_pass in ((7, 2, 4, 256), (7, 2, 4, 8), (3, 5, 3, 7), (2, 4, 6, 4), (5, 1, 1, 1)):
        seen = np.zeros((chips, to, ti), dtype=int)
        for part, rows in _passes(chips, to, ti, per_pass):
            seen[part, rows] += 1
            held = len(range(*part.indices(chips))) * len(range(*rows.indices(to))) * ti
            assert held <= max(per_pass, ti)
        assert (seen == 1).all()


@pytest.mark.parametrize("shape", [(40, 48), (40, 33)])
@pytest.mark.parametrize("per_pass", [1, 3, 4, 6, 9, 256])
def test_a_fleets_weights_are_the_same_bits_whatever_its_passes(monkeypatch, per_pass: int, shape) -> None:
    """Realising a fleet's meshes in passes of any size (whole chips, rows of a chip's blocks, a short last group
    of rows, one mesh) gives every weight the bits of one pass of everything (each mesh aligned, one thread), at a
    drift and a shift; padded blocks cropped on both sides."""
    chips = _pool(3)                                        # 3 x 3 blocks of a 16-mode mesh a chip
    rng = np.random.default_rng(5)
    settings = [rng.uniform(0, 2 * np.pi, MZI.control_shape(shape)) for _ in chips]
    state = MZI.fleet_layer(shape, settings, chips, chips[0].shape)
    conditions = ChipState(torch.tensor([0.3, -0.7, 1.1]), torch.full((3, 256), 0.01))
    monkeypatch.setattr(mzi, "meshes_per_pass", lambda n: 10 ** 6)
    whole = MZI._realise(state, slice(0, 3), conditions)
    monkeypatch.setattr(mzi, "meshes_per_pass", lambda n: per_pass)
    parts = MZI._realise(state, slice(0, 3), conditions)
    assert torch.equal(whole, parts) and whole.shape == (3, *shape)


def test_batches_of_chips_mapped_on_several_threads_are_the_one_threads(monkeypatch) -> None:
    """With torch on two threads the batches of chips are mapped side by side (one Python thread each): every
    chip's settings, residual and clipping are those of the mapping on one thread, bit for bit, and torch keeps
    the caller's thread count."""
    chips = _pool(3)
    flags = np.zeros(chips[1].calibration["phase_offset"].shape, dtype=np.uint8)
    flags[[5, 60]] = 1
    chips[1] = _with_faults(chips[1], flags)              # one batch runs the faulty chip's longer fit and refit
    W, controls = _layer(shape=(10, 32))
    monkeypatch.setattr(mzi, "MAP_BATCH_BYTES", 1)                  # one chip a batch
    args = (W, controls, [c.calibration for c in chips], [c.environment for c in chips], chips[0].shape,
            MZI.metadata())
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = MZI.map_fleet_layer(*args)
        torch.set_num_threads(2)
        shared = MZI.map_fleet_layer(*args)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(alone, shared):
        assert np.array_equal(a.settings, b.settings) and a.residual == b.residual and a.clipping == b.clipping


def test_map_models_is_map_model_per_chip(mzi_model) -> None:
    from pnndeploy.deploy.mapping import map_models

    model, _ = mzi_model
    chips = [read_profile(MZI_PROFILES / f"chip{c}.h5") for c in "AB"]
    together = map_models(model, chips)
    for chip, deployment in zip(chips, together):
        alone = map_model(model, chip)
        assert deployment.device_id == chip.device_id
        for a, b in zip(alone.layers, deployment.layers):
            np.testing.assert_allclose(a.settings, b.settings, atol=1e-6)
            assert a.residual == pytest.approx(b.residual, rel=1e-6)


def _with_faults(profile, flags: np.ndarray):
    out = copy.deepcopy(profile)
    out.calibration = {**out.calibration, "faulty": flags}
    return out


def _residual_as_realised(profile, settings, W, faulty) -> float:
    """||Re U - W|| of the calibrated model when faulty shifters ignore their settings (realise their offset and
    their neighbours' spill)."""
    from pnndeploy.platforms.mzi import _blocks, _spill

    n = profile.shape[0]
    c = float(profile.environment.crosstalk)
    h = np.where(faulty, 0.0, settings)
    phases = h + profile.calibration["phase_offset"] + c * _spill(h, n)
    ratios = np.broadcast_to(profile.calibration["splitter_ratio"], (*phases.shape[:2], mzi_count(n), 2)).copy()
    U = mesh_unitary(phases, n, ratios)
    mask = _blocks(np.ones_like(W), n) > 0
    return float(np.sqrt(np.sum(np.where(mask, U.real - _blocks(W, n), 0.0) ** 2)))


def test_faulty_shifters_are_held_and_the_others_fitted_around_them(chip) -> None:
    """A faulty shifter is programmed at 0 and counted; fitting around it beats programming as if it worked."""
    W, controls = _layer(seed=5)
    flags = np.zeros(phase_count(16), dtype=bool)
    flags[np.random.default_rng(4).choice(phase_count(16), 6, replace=False)] = True
    env = chip.environment
    naive = MZI.map_layer(W, controls, chip.calibration, env, chip.shape, MZI.metadata())
    broken = _with_faults(chip, flags)
    aware = MZI.map_layer(W, controls, broken.calibration, env, chip.shape, MZI.metadata())
    assert np.all(aware.settings[..., flags] == 0.0)
    blocks = aware.settings.shape[0] * aware.settings.shape[1]
    assert aware.clipping.faulty == 6 * blocks and naive.clipping.faulty == 0
    assert aware.clipping.total == aware.clipping.faulty + aware.clipping.range + aware.clipping.reach
    ours = _residual_as_realised(broken, aware.settings, W, flags)
    assert ours == pytest.approx(aware.residual, rel=1e-6)       # the residual reported is the realised one
    as_if_working = _residual_as_realised(broken, naive.settings, W, flags)
    assert ours < 0.7 * as_if_working


def test_uncalibrated_mapping_ignores_the_chip_and_loses_accuracy_the_fleet_recovers(mzi_model) -> None:
    model, data = mzi_model
    profile = read_profile(MZI_PROFILES / "chipA.h5")
    calibrated = SimulatedFleet(model, [profile], [map_model(model, profile)]).accuracy(data.X, data.y)[0]
    blind = uncalibrated(profile)
    assert np.all(blind.calibration["phase_offset"] == 0) and np.all(blind.calibration["splitter_ratio"] == 0.5)
    assert blind.fabrication is profile.fabrication
    blind_acc = SimulatedFleet(model, [profile], [map_model(model, blind)]).accuracy(data.X, data.y)[0]
    assert calibrated > blind_acc + 0.1


def test_drift_shifts_every_phase_by_its_own_coefficient(chip) -> None:
    profile = _perfect(chip, crosstalk=0.0)
    settings = np.random.default_rng(5).uniform(0, TWO_PI, MZI.control_shape((16, 16)))
    state = MZI.fleet_layer((16, 16), [settings], [profile], profile.shape)
    warm = _weights(state, 0.5)
    shifted = _weights(state, 0.0, (0.5 * profile.environment.drift_coefficient)[None])
    np.testing.assert_allclose(warm, shifted, atol=1e-5)
    assert np.abs(warm - _weights(state)).max() > 1e-3


# ------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def mzi_model(tmp_path_factory):
    """A small SAT model on the MZI platform (hidden 16, 3 epochs) and its test split."""
    from pnndeploy.deploy.transfer import load_evaluation_data
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path_factory.mktemp("mzi_model") / "mzi.onnx"
    train_and_export("digits", TrainConfig(platform="mzi", epochs=3, hidden=[16]), path)
    model = load_model(path)
    return model, load_evaluation_data(model)


def test_exported_mzi_weights_are_what_the_ideal_mesh_makes_of_its_phases(mzi_model) -> None:
    model, data = mzi_model
    assert model.platform == "mzi" and model.platform_params["modes"] == MZI.modes
    assert model.layers[0].controls.shape == MZI.control_shape(model.layers[0].weight.shape)
    for layer in model.layers:         # the file's W is what the ideal mesh makes of the file's phases
        realised = MZI.nominal_weights(torch.from_numpy(layer.controls).double(), layer.weight.shape).numpy()
        np.testing.assert_allclose(realised, layer.weight, atol=1e-5)
    # (that onnxruntime runs the file to these outputs: tests/test_platform_conformance.py)


def test_standard_on_mzi_decomposes_at_export_without_changing_outputs(tmp_path) -> None:
    from pnndeploy.data.datasets import load_dataset
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.model import accuracy
    from pnndeploy.training.pipeline import train_and_export

    data = load_dataset("digits", seed=0)
    summary, result = train_and_export(data, TrainConfig(platform="mzi", method="standard", epochs=2, hidden=[8]),
                                       tmp_path / "std.onnx")
    X = torch.from_numpy(data.scaling.apply(data.X_test))
    trained = result.model(X).detach().numpy()
    exported = load_model(tmp_path / "std.onnx")
    np.testing.assert_allclose(exported.logits(data.scaling.apply(data.X_test)), trained, atol=1e-3)
    assert summary.test_accuracy == pytest.approx(accuracy(result.model, X, torch.from_numpy(data.y_test)),
                                                  abs=1 / 360)
    assert summary.clipped_weights == 0


def test_cli_mzi_end_to_end(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("train", "--platform", "mzi", "--epochs", "2", "--hidden", "8", "--out", "m.onnx", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["platform"] == "mzi"
    result = cli("fleet", "make", "--platform", "mzi", "--process", MZI_PROFILES / "process.yaml", "--count", "2",
                 "--out", "lot", "--json")
    assert result.exit_code == 0, result.output
    assert cli("profile", "validate", "lot/chipA.h5").exit_code == 0
    listed = json.loads(cli("fleet", "list", "--profiles", "lot", "--json").stdout)
    assert [d["platform"] for d in listed["devices"]] == ["mzi", "mzi"]
    assert listed["devices"][0]["phase_shifters"] == 256 and listed["devices"][0]["array"] == [16, 16]
    result = cli("transfer", "--fleet", "--model", "m.onnx", "--profiles", "lot", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["fleet"]["count"] == 2 and len(doc["devices"][0]["mapping_residual"]) == 2
    with h5py.File(doc["devices"][0]["deployment"]) as f:
        assert f["settings/layer0"].attrs["units"] == "rad" and f["settings/layer0"].shape == (1, 4, 256)
    result = cli("audit", "--fleet", "--model", "m.onnx", "--profiles", "lot", "--temperature", "-0.5:0.5:0.5",
                 "--days", "0:30:30", "--draws", "1", "--threshold", "0", "--json")
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["sweeps"]) >= {"temperature_K", "days"}


def test_mixing_platforms_is_one_line_and_exit_2(cli, one_line_error, tmp_path, tiny_export) -> None:
    """An MRR model on MZI chips."""
    line = one_line_error(cli("transfer", "--fleet", "--model", tiny_export.path, "--profiles", MZI_PROFILES,
                              "--no-save"), "is a mzi chip", "trained for mrr")
    assert "use a mrr profile" in line


def test_default_mzi_fleet_is_found_from_the_model(cli, tmp_path, monkeypatch, mzi_model) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "device_profiles").symlink_to(REPO / "device_profiles")
    monkeypatch.delenv("PNNDEPLOY_PROFILES", raising=False)
    result = cli("transfer", "--fleet", "--model", mzi_model[0].path, "--no-save", "--json")
    assert result.exit_code == 0, result.output
    assert [d["device"] for d in json.loads(result.stdout)["devices"]] == [f"chip{c}" for c in "ABCDEFGH"]


def test_the_default_mzi_fleet_has_the_papers_fabrication_errors() -> None:
    """(That the shipped fleet is this spec regenerated: tests/test_platform_conformance.py.)"""
    process = load_process(MZI_PROFILES / "process.yaml")
    assert process["mzi"]["splitter_error_sigma"] == 0.15 and process["mzi"]["phase_error_sigma_rad"] == 0.15


# --------------------------------------------------------------------------------------------- bad input
def _edited(tmp_path: Path, edit) -> Path:
    target = tmp_path / "chipX.h5"
    shutil.copyfile(MZI_PROFILES / "chipA.h5", target)
    with h5py.File(target, "r+") as f:
        edit(f)
    return target


def _replace(path: str, values) -> callable:
    def edit(f):
        attrs = dict(f[path].attrs)
        del f[path]
        f[path] = values
        f[path].attrs.update(attrs)
    return edit


@pytest.mark.parametrize("edit, fragment", [
    (lambda f: f["layout"].attrs.__setitem__("cols", 8), "an MZI mesh is square"),
    (_replace("fabrication/splitter_ratio", np.full((120, 2), 1.2)), "outside (0, 1)"),
    (_replace("calibration/splitter_ratio", np.full((16, 16), 0.5)), "expected (120, 2)"),
    (_replace("calibration/phase_offset", np.full(255, 0.0)), "expected (256,)"),
    (_replace("environment/drift_coefficient", np.full((16, 16), 0.07)), "expected (256,)"),
])
def test_bad_mzi_profiles_are_refused_with_one_line(cli, one_line_error, tmp_path, edit, fragment) -> None:
    path = _edited(tmp_path, edit)
    one_line_error(cli("profile", "validate", path), str(path), fragment)


def test_bad_mzi_process_spec_is_refused(tmp_path) -> None:
    from pnndeploy.errors import ConfigError

    text = (MZI_PROFILES / "process.yaml").read_text()
    bad = tmp_path / "process.yaml"
    bad.write_text(text.replace("array: {rows: 16, cols: 16}", "array: {rows: 16, cols: 8}"))
    with pytest.raises(ConfigError, match="key 'array'.*square"):
        load_process(bad)
    bad.write_text(text.replace("  splitter_error_sigma: 0.15", "  splitter_error_sigma: -0.1"))
    with pytest.raises(ConfigError, match="mzi.splitter_error_sigma.*standard deviation"):
        load_process(bad)


def test_a_model_with_a_bad_mesh_size_is_refused_with_one_line(cli, one_line_error, tmp_path, mzi_model) -> None:
    import onnx

    for value in ("0", "0.5", "\"16\"", "1e9"):
        proto = onnx.load(str(mzi_model[0].path))
        for entry in proto.metadata_props:
            if entry.key == "pnndeploy.platform_params":
                params = json.loads(entry.value)
                entry.value = json.dumps(params).replace(f'"modes": {params["modes"]}', f'"modes": {value}')
        bad = tmp_path / "bad.onnx"
        onnx.save(proto, str(bad))
        one_line_error(cli("transfer", "--fleet", "--model", bad, "--profiles", MZI_PROFILES, "--no-save"),
                       "bad.onnx", "platform_params.modes")


def test_an_mzi_profile_of_one_mode_is_refused(cli, one_line_error, tmp_path) -> None:
    path = _edited(tmp_path, lambda f: (f["layout"].attrs.__setitem__("rows", 1),
                                        f["layout"].attrs.__setitem__("cols", 1)))
    one_line_error(cli("profile", "validate", path), "at least 2 modes")


def test_adaptive_sat_is_refused_for_phases(cli, one_line_error, tmp_path) -> None:
    one_line_error(cli("train", "--platform", "mzi", "--method", "sat", "--adaptive", "--out", tmp_path / "m.onnx"),
                   "--adaptive", "periodic")
    assert not (tmp_path / "m.onnx").exists()


def test_fleet_make_of_an_mzi_process_never_writes_into_the_ring_fleet(cli, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("fleet", "make", "--process", MZI_PROFILES / "process.yaml", "--count", "1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["profiles"] == ["device_profiles/mzi/chipA.h5"]
    result = cli("fleet", "make", "--platform", "mrr", "--process", MZI_PROFILES / "process.yaml")
    assert result.exit_code == 2 and "is a mzi process but --platform is mrr" in result.stderr


def test_demo_refuses_a_fleet_of_another_platform_before_training(cli, one_line_error, tmp_path,
                                                                  monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    one_line_error(cli("demo", "--platform", "mzi", "--quick", "--profiles", REPO / "device_profiles"),
                   "holds mrr chips but the demo is for mzi")
    assert not (tmp_path / "reports").exists()


def test_transfer_maps_with_the_threads_it_was_given(tmp_path, monkeypatch) -> None:
    """--threads bounds the mapping too: the batches of chips go side by side on as many threads as the compute
    has, one with --threads 1 (the mapping ran outside the compute's threads before)."""
    from pnndeploy.compute import Compute
    from pnndeploy.deploy.transfer import prepare_fleet
    from pnndeploy.training.config import TrainConfig
    from pnndeploy.training.pipeline import train_and_export

    path = tmp_path / "mzi.onnx"
    train_and_export("digits", TrainConfig(platform="mzi", epochs=1, hidden=[16]), path)
    seen: list[int] = []
    original = mzi.each_on_one_thread

    def spy(work, pieces, threads):
        seen.append(threads)
        return original(work, pieces, threads)

    monkeypatch.setattr(mzi, "each_on_one_thread", spy)
    for threads in (1, 2):
        seen.clear()
        prepare_fleet(path, [], True, MZI_PROFILES, save_dir=None, compute=Compute("cpu", threads)).close()
        assert seen and set(seen) == {threads}
