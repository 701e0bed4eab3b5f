"""The microring (MRR) platform: Lorentzian transfer, its derivative and its inverse."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pnndeploy.errors import PnnError
from pnndeploy.platforms import MRRPlatform, get_platform

PARAMS = [(0.15, 1.0), (0.15, 0.8), (0.05, 0.95), (0.4, 0.6), (0.15, 0.3)]


@pytest.fixture(scope="module")
def mrr() -> MRRPlatform:
    return get_platform("mrr")


def reachable_weights(mrr: MRRPlatform, gamma: float, a: float, n: int = 401) -> np.ndarray:
    """Weights from 1 - 2a (on resonance) to W at the edge of the control range, ends included."""
    x_max = min(abs(v) for v in mrr.control_range)
    return np.linspace(1.0 - 2.0 * a, float(mrr.transfer(x_max, gamma, a)), n)


def test_lookup_and_declared_attributes(mrr):
    assert isinstance(mrr, MRRPlatform)
    assert mrr.name == "mrr"
    assert mrr.nominal == {"gamma": 0.15, "a": 1.0}
    lo, hi = mrr.control_range
    assert lo < 0 < hi
    assert set(mrr.params_dict()) == {"gamma", "a"}
    with pytest.raises(PnnError, match="plasmonic.*mrr"):
        get_platform("plasmonic")


@pytest.mark.parametrize("gamma,a", PARAMS)
def test_transfer_on_resonance_and_far_away(mrr, gamma, a):
    assert mrr.transfer(0.0, gamma, a) == pytest.approx(1.0 - 2.0 * a, abs=1e-15)
    far = np.array([1e3, -1e3, 1e5]) * gamma
    np.testing.assert_allclose(mrr.transfer(far, gamma, a), 1.0, atol=3e-6)
    # monotone in |x| on each flank, even in x
    x = np.linspace(0.0, 3.0, 301)
    w = mrr.transfer(x, gamma, a)
    assert np.all(np.diff(w) > 0)
    np.testing.assert_array_equal(mrr.transfer(-x, gamma, a), w)


@pytest.mark.parametrize("gamma,a", PARAMS)
def test_weights_lie_in_minus_one_one(mrr, gamma, a):
    x = np.linspace(-50.0, 50.0, 100_001)
    w = mrr.transfer(x, gamma, a)
    assert w.min() >= -1.0 and w.max() <= 1.0
    assert w.min() == pytest.approx(1.0 - 2.0 * a)


def test_nominal_values_match_the_paper(mrr):
    """W = 1 - 2/(1 + (x/0.15)^2) for the nominal ring: W(0.15) = 0, W(0.15*sqrt(3)) = 0.5."""
    assert mrr.transfer(0.15) == pytest.approx(0.0, abs=1e-15)
    assert mrr.transfer(0.15 * math.sqrt(3.0)) == pytest.approx(0.5, abs=1e-12)
    assert mrr.transfer(0.0) == -1.0


@pytest.mark.parametrize("gamma,a", PARAMS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_inverse_round_trip_respects_sign(mrr, gamma, a, sign):
    w = reachable_weights(mrr, gamma, a)
    x, ok = mrr.inverse(w, sign, gamma=gamma, a=a)
    assert ok.dtype == bool and ok.shape == w.shape and ok.all()
    np.testing.assert_allclose(mrr.transfer(x, gamma, a), w, rtol=0, atol=1e-9)
    lo, hi = mrr.control_range
    assert np.all((x >= lo) & (x <= hi))
    interior = w > w[0]  # every weight but the on-resonance one has a nonzero control
    if sign > 0:
        assert np.all(x >= 0) and np.all(x[interior] > 0)
    else:
        assert np.all(x <= 0) and np.all(x[interior] < 0)


def test_inverse_elementwise_sign_and_paper_formula(mrr):
    w = np.array([-0.5, 0.0, 0.3, 0.9, -0.99, 0.7])
    sign = np.array([1.0, -1.0, -1.0, 1.0, -1.0, 0.0])
    x, ok = mrr.inverse(w, sign)
    assert ok.all()
    expected = 0.15 * np.sqrt((1 + w) / (1 - w))  # PAPER.md, a = 1
    np.testing.assert_allclose(np.abs(x), expected, rtol=1e-12)
    np.testing.assert_array_equal(np.sign(x), [1.0, -1.0, -1.0, 1.0, -1.0, 1.0])
    np.testing.assert_allclose(mrr.transfer(x), w, atol=1e-12)


def test_inverse_with_per_device_parameters(mrr):
    """gamma and a may be arrays of the weights' shape (a fabricated chip)."""
    rng = np.random.default_rng(3)
    gamma = 0.15 * (1 + 0.05 * rng.standard_normal((4, 5)))
    a = rng.uniform(0.85, 1.0, (4, 5))
    w = rng.uniform(-0.6, 0.9, (4, 5))
    sign = np.where(rng.random((4, 5)) < 0.5, -1.0, 1.0)
    x, ok = mrr.inverse(w, sign, gamma=gamma, a=a)
    assert x.shape == (4, 5) and ok.shape == (4, 5) and ok.all()
    np.testing.assert_allclose(mrr.transfer(x, gamma, a), w, atol=1e-9)
    np.testing.assert_array_equal(np.sign(x), sign)


@pytest.mark.parametrize("gamma,a", [(0.15, 1.0), (0.15, 0.8), (0.05, 0.6)])
def test_unreachable_weights_are_flagged_and_clipped(mrr, gamma, a):
    lo, hi = mrr.control_range
    w_min = 1.0 - 2.0 * a
    w_max = float(mrr.transfer(hi, gamma, a))
    w = np.array([w_min - 0.3, w_min - 1e-6, w_min, 0.5 * (w_min + w_max), w_max, w_max + 1e-6, 1.0, 1.7])
    x, ok = mrr.inverse(w, 1.0, gamma=gamma, a=a)
    np.testing.assert_array_equal(ok, [False, False, True, True, True, False, False, False])
    assert np.all((x >= lo) & (x <= hi))
    realised = mrr.transfer(x, gamma, a)
    # clipped to the nearest reachable value: on resonance below, the range edge above
    np.testing.assert_allclose(realised[:2], w_min, atol=1e-12)
    np.testing.assert_allclose(x[:2], 0.0, atol=1e-12)
    np.testing.assert_allclose(realised[5:], w_max, atol=1e-12)
    np.testing.assert_allclose(x[5:], hi, atol=1e-12)
    xn, okn = mrr.inverse(w, -1.0, gamma=gamma, a=a)
    np.testing.assert_array_equal(okn, ok)
    np.testing.assert_allclose(xn[5:], lo, atol=1e-12)


def test_small_extinction_cannot_reach_zero(mrr):
    """With a = 0.3 the ring reaches at best W = 0.4: W = 0 is unreachable."""
    x, ok = mrr.inverse(np.array([0.0, 0.4, 0.5]), 1.0, gamma=0.15, a=0.3)
    np.testing.assert_array_equal(ok, [False, True, True])
    assert mrr.transfer(x[0], 0.15, 0.3) == pytest.approx(0.4)


@pytest.mark.parametrize("gamma,a", PARAMS)
def test_derivative_matches_central_difference(mrr, gamma, a):
    x = np.concatenate([np.linspace(-3.0, 3.0, 121), gamma * np.array([-2.0, -1.0, -0.3, 0.0, 0.3, 1.0, 2.0])])
    h = 1e-6 * gamma
    fd = (mrr.transfer(x + h, gamma, a) - mrr.transfer(x - h, gamma, a)) / (2 * h)
    d = mrr.derivative(x, gamma, a)
    scale = np.max(np.abs(d))
    np.testing.assert_allclose(d, fd, rtol=1e-6, atol=1e-7 * scale)
    assert mrr.derivative(0.0, gamma, a) == 0.0
    # odd in x: the two flanks slope in opposite directions
    np.testing.assert_allclose(mrr.derivative(-x, gamma, a), -d, rtol=1e-15)


@pytest.mark.parametrize("gamma,a", PARAMS)
def test_steepest_slope_at_gamma_over_sqrt3(mrr, gamma, a):
    x_star = gamma / math.sqrt(3.0)
    x = np.linspace(0.0, 10 * gamma, 200_001)
    d = mrr.derivative(x, gamma, a)
    assert x[np.argmax(d)] == pytest.approx(x_star, abs=2 * (x[1] - x[0]))
    peak = 3.0 * math.sqrt(3.0) * a / (4.0 * gamma)  # 4a u/(gamma (1+u^2)^2) at u = 1/sqrt(3)
    assert mrr.derivative(x_star, gamma, a) == pytest.approx(peak, rel=1e-12)
    assert d.max() <= peak * (1 + 1e-12)
    assert mrr.derivative(-x_star, gamma, a) == pytest.approx(-peak, rel=1e-12)
    # |x| = gamma is not the maximum (PAPER.md's "steepest at |x| = gamma" is off)
    assert mrr.derivative(gamma, gamma, a) < peak


def test_torch_and_numpy_agree(mrr):
    x64 = np.linspace(-3.0, 3.0, 97)
    gamma, a = 0.12, 0.9
    w_np = mrr.transfer(x64, gamma, a)
    d_np = mrr.derivative(x64, gamma, a)
    xt = torch.from_numpy(x64)
    w_t = mrr.transfer(xt, gamma, a)
    d_t = mrr.derivative(xt, gamma, a)
    assert isinstance(w_t, torch.Tensor) and isinstance(d_t, torch.Tensor)
    assert w_t.dtype == torch.float64
    np.testing.assert_allclose(w_t.numpy(), w_np, rtol=0, atol=1e-15)
    np.testing.assert_allclose(d_t.numpy(), d_np, rtol=1e-14, atol=1e-14)
    # float32 tensors stay float32, and the autograd slope equals derivative()
    x32 = torch.tensor(x64, dtype=torch.float32, requires_grad=True)
    w32 = mrr.transfer(x32, gamma, a)
    assert w32.dtype == torch.float32
    w32.sum().backward()
    np.testing.assert_allclose(x32.grad.numpy(), mrr.derivative(x32.detach().double().numpy(), gamma, a),
                               rtol=1e-4, atol=1e-3)
    # per-device parameters as tensors
    g_t = torch.full((97,), gamma, dtype=torch.float64)
    np.testing.assert_allclose(mrr.transfer(xt, g_t, a).numpy(), w_np, atol=1e-15)
    # inverse accepts tensors too (through numpy) and returns numpy
    x_inv, ok = mrr.inverse(torch.tensor([-0.5, 0.2]), -1.0)
    assert isinstance(x_inv, np.ndarray) and ok.all()
    np.testing.assert_allclose(mrr.transfer(x_inv), [-0.5, 0.2], atol=1e-7)


def test_init_controls_spread_weights_on_both_flanks(mrr):
    g = torch.Generator().manual_seed(0)
    c = mrr.init_controls((40, 50), g, bound=0.9)
    assert c.dtype == torch.float32 and c.shape == (40, 50)
    w = mrr.transfer(c.double(), **mrr.nominal)
    assert w.min() >= -0.9 - 1e-6 and w.max() <= 0.9 + 1e-6
    assert w.min() < -0.8 and w.max() > 0.8
    frac_neg = (c < 0).double().mean().item()
    assert 0.4 < frac_neg < 0.6
    lo, hi = mrr.control_range
    assert c.min() >= lo and c.max() <= hi
    again = mrr.init_controls((40, 50), torch.Generator().manual_seed(0))
    assert torch.equal(c, again)
