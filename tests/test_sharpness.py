"""Sharpness: power iteration for the dominant Hessian eigenvalue, and the model's sharpness in controls."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pnndeploy.platforms import get_platform
from pnndeploy.training.model import PNN
from pnndeploy.training.sharpness import model_sharpness, top_hessian_eigenvalue

MRR = get_platform("mrr")


def symmetric_with_eigenvalues(eigenvalues, seed=0, dtype=torch.float64) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(eigenvalues), len(eigenvalues))))
    a = q @ np.diag(eigenvalues) @ q.T
    return torch.tensor(0.5 * (a + a.T), dtype=dtype)


def quadratic(A: torch.Tensor, seed: int = 1):
    x = torch.randn(A.shape[0], generator=torch.Generator().manual_seed(seed), dtype=A.dtype,
                    requires_grad=True)
    return x, (lambda: 0.5 * x @ A @ x)


@pytest.mark.parametrize("eigenvalues,expected", [
    ([5.0, 2.0, -1.0, 0.5], 5.0),
    ([-6.0, 3.0, 1.0, 0.5], -6.0),          # dominant negative: returned signed
    ([0.1, 40.0, -3.0, 7.0, 0.0, 2.0], 40.0),
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_quadratic_with_known_spectrum(eigenvalues, expected, dtype):
    A = symmetric_with_eigenvalues(eigenvalues, dtype=dtype)
    x, loss_fn = quadratic(A)
    x0 = x.detach().clone()
    value = top_hessian_eigenvalue(loss_fn, [x])
    assert isinstance(value, float)
    assert value == pytest.approx(expected, abs=1e-3)
    assert torch.equal(x.detach(), x0)  # the point is not moved
    assert x.grad is None               # and no .grad is left behind


def test_block_diagonal_over_two_tensors():
    A1 = symmetric_with_eigenvalues([1.0, 3.0], seed=2)
    A2 = symmetric_with_eigenvalues([7.0, 2.0, -1.0], seed=3)
    x1, f1 = quadratic(A1, seed=4)
    x2, f2 = quadratic(A2, seed=5)
    value = top_hessian_eigenvalue(lambda: f1() + f2(), [x1, x2])
    assert value == pytest.approx(7.0, abs=1e-3)
    # dominant block in the first tensor, and parameters of other shapes (a matrix)
    B = symmetric_with_eigenvalues([-9.0, 1.0, 2.0, 0.5, 3.0, 1.5], seed=6)
    m = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    value = top_hessian_eigenvalue(lambda: 0.5 * m.flatten() @ B @ m.flatten() + f1(), [m, x1])
    assert value == pytest.approx(-9.0, abs=1e-3)


def test_non_quadratic_function_at_a_point():
    """f(x, y) = x^2 y + y^3 / 3 at (1, 2): Hessian [[4, 2], [2, 4]], eigenvalues 6 and 2."""
    x = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    y = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    value = top_hessian_eigenvalue(lambda: x * x * y + y ** 3 / 3, [x, y])
    assert value == pytest.approx(6.0, abs=1e-3)


def test_zero_hessian_gives_zero():
    A = torch.zeros(3, 3, dtype=torch.float64)
    x, loss_fn = quadratic(A)
    assert top_hessian_eigenvalue(loss_fn, [x]) == 0.0


def tiny_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.rand(40, 6, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    return X, y


def explicit_dominant_eigenvalue(model: PNN, X: torch.Tensor, y: torch.Tensor) -> float:
    """Full Hessian of the loss w.r.t. all controls (flattened), in float64."""
    nominal = model.to_controls().double()
    names = [f"layers.{k}.controls" for k in range(len(nominal.layers))]
    shapes = [nominal.layers[k].controls.shape for k in range(len(nominal.layers))]
    sizes = [int(np.prod(s)) for s in shapes]
    flat0 = torch.cat([nominal.layers[k].controls.detach().flatten() for k in range(len(nominal.layers))])

    def loss_of(flat):
        parts = torch.split(flat, sizes)
        params = {n: p.reshape(s) for n, p, s in zip(names, parts, shapes)}
        return nn.functional.cross_entropy(torch.func.functional_call(nominal, params, (X.double(),)), y)

    H = torch.autograd.functional.hessian(loss_of, flat0)
    ev = np.linalg.eigvalsh(H.numpy())
    return float(ev[np.argmax(np.abs(ev))])


@pytest.mark.parametrize("parameterisation", ["controls", "weights"])
def test_model_sharpness_matches_the_explicit_hessian(parameterisation):
    X, y = tiny_problem()
    model = PNN([6, 4, 3], MRR, seed=0, parameterisation=parameterisation)
    expected = explicit_dominant_eigenvalue(model, X, y)
    value = model_sharpness(model, X, y, iterations=500)
    assert value == pytest.approx(expected, rel=2e-3)


def test_model_sharpness_is_deterministic_and_leaves_the_model_alone(tiny_export):
    from pnndeploy.training.loop import evaluation_tensors

    model = tiny_export.result.model
    X, y = evaluation_tensors(tiny_export.dataset)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    was_training = model.training
    a = model_sharpness(model, X, y)
    torch.manual_seed(999)  # global RNG must not matter
    b = model_sharpness(model, X, y)
    assert a == b
    assert np.isfinite(a) and a != 0
    assert a == tiny_export.summary.sharpness  # what the pipeline reported
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.dtype == torch.float32
    assert model.training == was_training
    for p, g in zip(model.parameters(), grads):  # no gradient accumulated into the model
        assert (p.grad is None and g is None) or torch.equal(p.grad, g)


def test_baseline_is_measured_in_control_units():
    """A weights-model and its to_controls() image have the same sharpness."""
    X, y = tiny_problem(1)
    baseline = PNN([6, 5, 3], MRR, seed=2, parameterisation="weights")
    mapped = baseline.to_controls()
    assert model_sharpness(baseline, X, y) == model_sharpness(mapped, X, y)


def test_max_samples_limits_the_batch():
    X, y = tiny_problem(2)
    model = PNN([6, 4, 3], MRR, seed=1)
    assert model_sharpness(model, X, y, max_samples=10) == model_sharpness(model, X[:10], y[:10])
    assert model_sharpness(model, X, y, max_samples=10) != model_sharpness(model, X, y)
