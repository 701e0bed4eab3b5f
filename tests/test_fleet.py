"""Simulated fleet: batched over chips, temperature, ageing shifts, crosstalk, noise streams; fleet statistics."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pnndeploy.deploy.mapping import map_model
from pnndeploy.deploy.results import FleetSummary
from pnndeploy.deploy.stats import wilson_interval
from pnndeploy.deploy.transfer import load_evaluation_data
from pnndeploy.errors import PnnError
from pnndeploy.formats.deployments import Deployment, LayerDeployment
from pnndeploy.formats.onnx_io import load_model
from pnndeploy.platforms import get_platform
from pnndeploy.platforms.tiling import ring_index
from pnndeploy.simulation.fabrication import generate_chip
from pnndeploy.simulation.fleet import Conditions, SimulatedFleet, correct_fraction

MRR = get_platform("mrr")
NAMES = ["chipA", "chipB", "chipC", "chipD"]


@pytest.fixture(scope="module")
def model(tiny_export):
    return load_model(tiny_export.path)


@pytest.fixture(scope="module")
def data(model):
    d = load_evaluation_data(model)
    return d.X[:150], d.y[:150]


@pytest.fixture(scope="module")
def chips(shipped_process):
    return [generate_chip(shipped_process, name, 1) for name in NAMES]


def _env(profiles, **changes):
    return [replace(p, environment=replace(p.environment, **changes)) for p in profiles]


def _fleet(model, profiles):
    return SimulatedFleet(model, profiles, [map_model(model, p) for p in profiles])


def _hand_weights(profile, settings, dT=0.0, shift=None):
    """W = T(h + r + k dT + shift + crosstalk * (same-tile row neighbours); truth), written out loop by loop."""
    rows, cols = profile.shape
    out_f, in_f = settings.shape
    fab, env = profile.fabrication, profile.environment
    W = np.empty((out_f, in_f))
    for o in range(out_f):
        for i in range(in_f):
            r, c = o % rows, i % cols
            neighbours = 0.0
            if c > 0:                               # left ring of the same tile
                neighbours += settings[o, i - 1]
            if c < cols - 1 and i + 1 < in_f:       # right ring of the same tile
                neighbours += settings[o, i + 1]
            x = settings[o, i] + fab["resonance_offset"][r, c] + env.drift_coefficient[r, c] * dT \
                + env.crosstalk * neighbours + (0.0 if shift is None else shift[r, c])
            W[o, i] = MRR.transfer(x, gamma=fab["gamma"][r, c], a=fab["a"][r, c])
    return W


# ------------------------------------------------------------------------------------------ batched == one by one


@pytest.mark.parametrize("noise", [0.0, 0.05])
def test_batched_fleet_equals_chip_by_chip(model, data, chips, noise) -> None:
    profiles = _env(chips, detector_noise=noise)
    fleet = _fleet(model, profiles)
    singles = [_fleet(model, [p]) for p in profiles]
    cond = Conditions(delta_T=0.3, eval_seed=7)
    for k in range(len(model.layers)):
        batched = fleet.realised_weights(k, slice(0, len(profiles)), cond)
        middle = fleet.realised_weights(k, slice(1, 3), cond)
        for i, single in enumerate(singles):
            alone = single.realised_weights(k, slice(0, 1), cond)[0]
            np.testing.assert_allclose(batched[i], alone, rtol=0, atol=1e-6)
        np.testing.assert_allclose(middle, batched[1:3], rtol=0, atol=1e-6)
    X, y = data
    alone_acc = np.array([s.accuracy(X, y, cond)[0] for s in singles])
    assert np.ptp(alone_acc) > 0                      # chips differ (the comparison is not trivial)
    for chunk in (1, 2, 3, 100):
        np.testing.assert_array_equal(fleet.accuracy(X, y, cond, chunk=chunk), alone_acc)


def test_detector_noise_streams(model, chips) -> None:
    noisy = _env(chips[:2], detector_noise=0.05)
    fleet = _fleet(model, noisy)
    quiet = _fleet(model, _env(chips[:2], detector_noise=0.0))
    w7 = fleet.realised_weights(0, slice(0, 2), Conditions(eval_seed=7))
    again = fleet.realised_weights(0, slice(0, 2), Conditions(eval_seed=7))
    w8 = fleet.realised_weights(0, slice(0, 2), Conditions(eval_seed=8))
    clean = quiet.realised_weights(0, slice(0, 2), Conditions(eval_seed=7))
    np.testing.assert_array_equal(w7, again)                                   # reproducible
    assert np.abs(w7 - w8).max() > 0.01                                        # a new draw per evaluation
    resid = (w7 - clean)
    assert 0.03 < resid.std() < 0.07                                           # the noise has the profile's std
    # the same chip under another name gets another stream
    twin = _fleet(model, [noisy[0], replace(noisy[0], device_id="chipZ")])
    t = twin.realised_weights(0, slice(0, 2), Conditions(eval_seed=7))
    assert np.abs(t[0] - t[1]).max() > 0.01


# ------------------------------------------------------------------------------------------ physics


def test_realised_weights_match_the_transfer_function(model, chips) -> None:
    """Crosstalk (same tile row only), offsets, drift and ring shift, against a loop-by-loop reference."""
    profile = _env(chips[:1], detector_noise=0.0, crosstalk=0.05)[0]
    deployment = map_model(model, profile)
    fleet = SimulatedFleet(model, [profile], [deployment])
    shift = np.random.default_rng(3).normal(0.0, 0.05, size=(1, *profile.shape))
    for dT, control_shift in ((0.0, None), (0.7, None), (-1.3, shift)):
        cond = Conditions(delta_T=dT, control_shift=control_shift)
        for k, layer in enumerate(deployment.layers):
            got = fleet.realised_weights(k, slice(0, 1), cond)[0]
            want = _hand_weights(profile, layer.settings, dT, None if control_shift is None else control_shift[0])
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5, err_msg=f"layer {k}, dT {dT}")


def test_temperature_shifts_every_ring_by_k_dT(model, chips) -> None:
    """dW/dT = T'(x) * k per ring (central difference) and the shift is linear in dT."""
    profile = _env(chips[:1], detector_noise=0.0, crosstalk=0.0)[0]
    deployment = map_model(model, profile)
    fleet = SimulatedFleet(model, [profile], [deployment])
    eps = 0.05
    layer = deployment.layers[0]
    ri, ci = ring_index(layer.settings.shape, profile.shape)
    fab = profile.fabrication
    x = layer.settings + fab["resonance_offset"][ri, ci]
    k = profile.environment.drift_coefficient[ri, ci]
    slope = MRR.derivative(x, gamma=fab["gamma"][ri, ci], a=fab["a"][ri, ci])
    up = fleet.realised_weights(0, slice(0, 1), Conditions(delta_T=eps))[0].astype(np.float64)
    down = fleet.realised_weights(0, slice(0, 1), Conditions(delta_T=-eps))[0].astype(np.float64)
    numeric = (up - down) / (2 * eps)
    np.testing.assert_allclose(numeric, slope * k, rtol=0.05, atol=2e-3)
    assert np.abs(slope * k).max() > 0.5                  # per-ring k matters, not a no-op


def test_per_chip_temperature_array(model, data, chips) -> None:
    profiles = chips[:3]
    fleet = _fleet(model, profiles)
    dT = np.array([0.0, 1.0, -2.0])
    cond = Conditions(delta_T=dT, eval_seed=2)
    X, y = data
    for chunk in (1, 2, 3):
        acc = fleet.accuracy(X, y, cond, chunk=chunk)
        expected = [fleet.accuracy(X, y, Conditions(delta_T=float(t), eval_seed=2))[i] for i, t in enumerate(dT)]
        np.testing.assert_array_equal(acc, expected)
    batched = fleet.realised_weights(0, slice(0, 3), cond)
    for i, t in enumerate(dT):
        alone = fleet.realised_weights(0, slice(i, i + 1), Conditions(delta_T=float(t), eval_seed=2))[0]
        np.testing.assert_allclose(batched[i], alone, rtol=0, atol=1e-6)
    assert np.abs(batched[2] - fleet.realised_weights(0, slice(2, 3), Conditions(eval_seed=2))[0]).max() > 0.05


def test_control_shift_lands_on_the_rings_tiles_only(model, chips) -> None:
    profiles = _env(chips[:2], detector_noise=0.0)            # crosstalk left on: it acts on heaters, not shifts
    fleet = _fleet(model, profiles)
    shift = np.zeros((2, *profiles[0].shape))
    shift[1, 3, 5] = 0.2
    base = [fleet.realised_weights(k, slice(0, 2), Conditions()) for k in range(2)]
    moved = [fleet.realised_weights(k, slice(0, 2), Conditions(control_shift=shift)) for k in range(2)]
    np.testing.assert_array_equal(moved[0][0], base[0][0])     # chip 0 untouched
    changed = np.argwhere(moved[0][1] != base[0][1])
    # layer0 is 8 x 64 on a 16 x 16 array: ring (3, 5) holds weights (3, 5), (3, 21), (3, 37), (3, 53)
    assert sorted(map(tuple, changed)) == [(3, 5), (3, 21), (3, 37), (3, 53)]
    assert sorted(map(tuple, np.argwhere(moved[1][1] != base[1][1]))) == [(3, 5)]   # layer1 is 10 x 8


def test_crosstalk_stays_inside_a_tile_row(model, chips) -> None:
    profile = _env(chips[:1], detector_noise=0.0, crosstalk=0.1)[0]
    s0 = np.zeros(model.layers[0].weight.shape)                 # 8 x 64: tiles of 16 columns
    s0[:, 15] = 1.0                                             # last ring column of the first tile
    s0[:, 16] = 0.5                                             # first ring column of the second tile
    s0[3, 40] = 0.8                                             # one heater in bank row 3
    layers = [LayerDeployment("layer0", s0, 0),
              LayerDeployment("layer1", np.zeros(model.layers[1].weight.shape), 0)]
    deployment = Deployment("chipA", "", "", "", profile.shape, layers, control_units="nm")
    fleet = SimulatedFleet(model, [profile], [deployment])
    W = fleet.realised_weights(0, slice(0, 1), Conditions())[0].astype(np.float64)
    fab = profile.fabrication
    ri, ci = ring_index(s0.shape, profile.shape)

    def T(o, i, x_extra):
        r, c = ri[o, i], ci[o, i]
        return MRR.transfer(s0[o, i] + fab["resonance_offset"][r, c] + x_extra, gamma=fab["gamma"][r, c],
                            a=fab["a"][r, c])

    for o in range(8):
        assert W[o, 14] == pytest.approx(T(o, 14, 0.1 * 1.0), abs=2e-5)       # gets col 15
        assert W[o, 15] == pytest.approx(T(o, 15, 0.0), abs=2e-5)             # col 16 is another tile
        assert W[o, 16] == pytest.approx(T(o, 16, 0.0), abs=2e-5)             # col 15 is another tile
        assert W[o, 17] == pytest.approx(T(o, 17, 0.1 * 0.5), abs=2e-5)       # gets col 16
        assert abs(T(o, 16, 0.1) - T(o, 16, 0.0)) > 1e-3                      # it would have shown
    assert W[3, 39] == pytest.approx(T(3, 39, 0.08), abs=2e-5)
    assert W[3, 41] == pytest.approx(T(3, 41, 0.08), abs=2e-5)
    for o in (2, 4):                                                           # other bank rows: nothing
        assert W[o, 40] == pytest.approx(T(o, 40, 0.0), abs=2e-5)


def test_real_chip_needs_a_hardware_backend(model, chips) -> None:
    real = replace(chips[0], fabrication=None)
    with pytest.raises(PnnError, match="hardware backend"):
        SimulatedFleet(model, [chips[1], real], [map_model(model, chips[1]), map_model(model, real)])


def test_empty_fleet_and_mixed_shapes_are_refused(model, chips, shipped_process) -> None:
    with pytest.raises(PnnError):
        SimulatedFleet(model, [], [])
    small = generate_chip({**shipped_process, "array": {"rows": 4, "cols": 4}}, "chipS", 1)
    with pytest.raises(PnnError, match="array shapes"):
        SimulatedFleet(model, [chips[0], small], [map_model(model, chips[0]), map_model(model, small)])


# ------------------------------------------------------------------------------------------ statistics


def test_wilson_interval_known_values() -> None:
    lo, hi = wilson_interval(0.9, 100)
    assert lo == pytest.approx(0.8256, abs=1e-4) and hi == pytest.approx(0.9448, abs=1e-4)
    lo, hi = wilson_interval(1.0, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1.0, abs=1e-12)
    lo, hi = wilson_interval(0.0, 10)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(0.5, 0) == (0.0, 1.0)


def test_fleet_summary_hand_example() -> None:
    s = FleetSummary.of(list("abcde"), [0.9, 0.8, 0.95, 0.7, 0.85], threshold=0.85).to_json()
    assert s["count"] == 5
    assert s["mean"] == pytest.approx(0.84)
    assert s["std"] == pytest.approx(np.sqrt(0.037 / 4))          # sample std (ddof 1)
    assert s["min"] == pytest.approx(0.7)
    assert s["p5"] == pytest.approx(0.72)                          # 0.7 + 0.2 * (0.8 - 0.7), linear
    assert s["median"] == pytest.approx(0.85)
    assert s["worst_device"] == "d"
    assert s["threshold"] == 0.85
    assert s["yield"] == pytest.approx(0.6)                        # 0.85 counts: "at or above"
    one = FleetSummary.of(["x"], [0.5], threshold=0.9).to_json()
    assert one["std"] == 0.0 and one["yield"] == 0.0 and one["worst_device"] == "x"


def test_noise_streams_are_not_the_fabrication_streams() -> None:
    """SeedSequence ignores trailing zeros: detector noise (eval 0, layer 0) must still not replay fabrication."""
    from pnndeploy.simulation.fabrication import chip_rng
    from pnndeploy.simulation.fleet import device_stream

    fab = chip_rng(0, "chipA").standard_normal(64)
    noise = device_stream("chipA", 0, 0).standard_normal(64)
    assert not np.allclose(fab, noise)


# ------------------------------------------------------------------------------ accuracy from scores
def _argmax_accuracy(scores, y):
    return (scores.argmax(axis=1) == y).mean(axis=1)


def _on_torch(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """correct_fraction as fleets compute it: torch tensors."""
    return correct_fraction(torch.from_numpy(scores), torch.from_numpy(np.asarray(y))).numpy()


@pytest.mark.parametrize("chips", [7, 40])
def test_correct_fraction_equals_argmax_on_random_scores(chips):
    rng = np.random.default_rng(3)
    scores = rng.standard_normal((chips, 10, 200)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    y[:40] = scores[0, :, :40].argmax(axis=0)          # chip 0 gets some right, so the check is not all zeros
    got = _on_torch(scores, y)
    np.testing.assert_array_equal(got, _argmax_accuracy(scores, y))
    assert got[0] >= 0.2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["numpy's count", "torch's count", "torch's count, bfloat16"])
@pytest.mark.parametrize("chips", [2, 40], ids=["few chips", "many chips"])
@pytest.mark.parametrize("poison", ["tie", "nan"])
def test_correct_fraction_follows_argmax_on_ties_and_nan(poison, chips, dtype):
    """Ties go to the first class, NaN wins: every path of the fleet's count is exactly numpy's argmax (float32 on
    the CPU counts in numpy; half precision, as another device would, in torch: by max for a few chips)."""
    scores = np.zeros((chips, 3, 4), dtype=np.float32)
    scores[:, 2, :] = -1.0
    if poison == "nan":
        scores[1, 1, 0] = np.nan
    y = np.array([1, 0, 1, 0])          # class 1 ties with class 0 everywhere: argmax says 0
    expected = _argmax_accuracy(scores, y)
    got = correct_fraction(torch.from_numpy(scores).to(dtype), torch.from_numpy(y))
    np.testing.assert_array_equal(got.numpy(), expected)
    assert expected[0] == 0.5


def test_the_label_against_the_maximum_answers_only_where_it_is_argmax():
    """The numpy count answers for plain samples and declines (None) for a tie, a NaN or a label that is not a
    class index, whatever the caller claimed (numpy would wrap a -1 to the last class)."""
    from pnndeploy.simulation.fleet import _label_scores_the_maximum

    scores = np.random.default_rng(1).standard_normal((3, 4, 6))
    y = scores[0].argmax(axis=0)
    np.testing.assert_array_equal(_label_scores_the_maximum(scores, y), scores.argmax(axis=1) == y)
    for poisoned, labels in (("tie", y), ("nan", y), ("label", np.where(np.arange(6) == 2, -1, y)),
                             ("label", np.where(np.arange(6) == 2, 4, y))):
        bad = scores.copy()
        if poisoned == "tie":
            bad[1, :, 3] = 0.0
        if poisoned == "nan":
            bad[2, 0, 5] = np.nan
        assert _label_scores_the_maximum(bad, labels) is None
    y_bad = torch.from_numpy(np.where(np.arange(6) == 2, -1, y))
    np.testing.assert_array_equal(correct_fraction(torch.from_numpy(scores), y_bad, True).numpy(),
                                  _argmax_accuracy(scores, y_bad.numpy()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("poison", ["one tie", "one nan", "a nan and a tie", "a tie of -0.0 and 0.0", "infinities"])
def test_correct_fraction_follows_argmax_when_one_sample_of_many_is_not_plain(poison, dtype):
    """The count of maxima must see a single tie, or a NaN, among thousands of plain samples (a NaN sample has no
    maximum and a tied one two: together they would add up to one each), and fall back to argmax's first maximum."""
    rng = np.random.default_rng(5)
    scores = rng.standard_normal((40, 10, 300)).astype(dtype)
    scores[0, 4, 7] = 9.0
    y = scores[0].argmax(axis=0)                       # chip 0 gets every sample right (class 4 at sample 7)
    if poison in ("one tie", "a nan and a tie"):
        scores[3, :, 7] = 0.0
        scores[3, [2, 4], 7] = 5.0                     # class 2 ties with the label: argmax says 2, a miss
    if poison in ("one nan", "a nan and a tie"):
        scores[11, :, 9] = 0.0
        scores[11, y[9], 9], scores[11, 6 if y[9] != 6 else 5, 9] = 1.0, np.nan   # the NaN wins (numpy's argmax):
        #                                                     a miss, though the label leads the other classes
    if poison == "a tie of -0.0 and 0.0":
        scores[3, :, 7] = -1.0
        scores[3, 2, 7], scores[3, 4, 7] = -0.0, 0.0   # equal: the first wins
    if poison == "infinities":
        scores[3, 4, 7] = scores[5, 1, 2] = np.inf
        scores[3, 2, 7] = np.inf
    np.testing.assert_array_equal(_on_torch(scores, y), _argmax_accuracy(scores, y))
    assert _on_torch(scores, y)[0] == 1.0


@pytest.mark.parametrize("labels", [[0, 1, 2, 7], [-1, 0, 1, 2], [0.0, 1.0, 2.0, 0.0], [True, False, True, False]],
                         ids=["beyond", "negative", "float", "bool"])
def test_correct_fraction_follows_the_definition_for_labels_that_are_not_class_indices(labels):
    scores = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    y = np.asarray(labels)
    np.testing.assert_array_equal(_on_torch(scores, y), _argmax_accuracy(scores, y))


def test_correct_fraction_refuses_labels_of_another_length_or_shape():
    scores = torch.zeros((2, 3, 5))
    for y in (torch.tensor([0, 1, 2]), torch.zeros((1, 5), dtype=torch.long)):
        with pytest.raises(ValueError):
            correct_fraction(scores, y)
