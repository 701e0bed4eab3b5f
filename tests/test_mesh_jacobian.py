"""The closed-form Jacobian of a mesh's real part, the Gauss-Newton metric built from it, and the fit that starts
from that metric (pnndeploy/platforms/mesh_jacobian.py, batched_lbfgs's ``metric``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pnndeploy.formats.process_spec import load_process
from pnndeploy.platforms import get_platform, mzi
from pnndeploy.platforms.lbfgs import batched_lbfgs
from pnndeploy.platforms.mesh import mesh_unitary, mzi_count
from pnndeploy.platforms.mesh_jacobian import PAIR_PRODUCT_MODES, SPD_LEAF, gauss_newton_metric, \
    loss_and_gradient, real_jacobian, spd_inverse
from pnndeploy.simulation.fabrication import generate_chip

from test_platform_mzi import MZI_PROFILES, _layer

MZI = get_platform("mzi")


def _random_meshes(n: int, count: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    phases = torch.rand(count, n * n, dtype=torch.float64, generator=g) * 2 * np.pi
    ratios = 0.5 + 0.1 * torch.randn(count, mzi_count(n), 2, dtype=torch.float64, generator=g)
    return phases, ratios


@pytest.mark.parametrize("n", [2, 3, 6, 7])
def test_real_jacobian_is_the_finite_difference_of_the_mesh(n: int) -> None:
    """Every phase (theta, phi of every MZI, the output screen) of meshes with imperfect couplers, odd and even
    sizes: the closed form agrees with central differences of mesh_unitary."""
    phases, ratios = _random_meshes(n, 3)
    J = real_jacobian(phases, n, ratios)
    eps = 1e-6
    basis = torch.eye(n * n, dtype=torch.float64)
    numeric = torch.stack([(mesh_unitary(phases + eps * basis[k], n, ratios).real
                            - mesh_unitary(phases - eps * basis[k], n, ratios).real) / (2 * eps)
                           for k in range(n * n)], 1)
    assert J.shape == (3, n * n, n, n)
    torch.testing.assert_close(J, numeric, atol=1e-8, rtol=0)


@pytest.mark.parametrize("n", [2, 3, 7, 16, PAIR_PRODUCT_MODES + 1])
def test_loss_and_gradient_by_hand_are_autograds(n: int) -> None:
    """The hand-written sweep gives the fit's loss ||mask (Re U - target)||^2 and autograd's gradient of it, for a
    mask with holes (padded rows and columns are such masks)."""
    phases, ratios = _random_meshes(n, 4, seed=3)
    g = torch.Generator().manual_seed(4)
    target = 0.3 * torch.randn(4, n, n, dtype=torch.float64, generator=g)
    mask = (torch.rand(4, n, n, generator=g) > 0.2).double()
    x = phases.clone().requires_grad_(True)
    loss = (mask * (mesh_unitary(x, n, ratios).real - target) ** 2).sum((-2, -1))
    (expected,) = torch.autograd.grad(loss.sum(), x)
    got_loss, got = loss_and_gradient(phases, n, ratios, target, mask)
    torch.testing.assert_close(got_loss, loss.detach(), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("n", [16, PAIR_PRODUCT_MODES, PAIR_PRODUCT_MODES + 40])
def test_loss_and_gradient_of_a_mesh_do_not_depend_on_its_batch(n: int) -> None:
    """float32, as the fit runs: one mesh alone or among others, the same bits (the fleet determinism test's
    premise), on both sides of the backward sweep's PAIR_PRODUCT_MODES (matrix products of row pairs below it,
    elementwise sweeps above: matrix products that large went through BLAS and rounded by batch)."""
    count = 7 if n < 100 else 3
    phases, ratios = (v.float() for v in _random_meshes(n, count, seed=5))
    target, mask = 0.3 * torch.randn(count, n, n), torch.ones(count, n, n)
    loss, grad = loss_and_gradient(phases, n, ratios, target, mask)
    for k in sorted({0, count // 2, count - 1}):
        one_loss, one = loss_and_gradient(phases[k:k + 1], n, ratios[k:k + 1], target[k:k + 1], mask[k:k + 1])
        assert torch.equal(one_loss, loss[k:k + 1]) and torch.equal(one, grad[k:k + 1])


@pytest.mark.parametrize("n", [3, 8, 65])
def test_the_gradient_of_a_loss_of_the_complex_unitary_is_autograds(n: int) -> None:
    """complex_loss_and_gradient for a loss of Re U and Im U unevenly (sum A Re U + B Im U + C Re U (Im U)^2, so
    that the output phases' gradients matter, which a port-power loss leaves at zero), meshes with their own
    couplers, against autograd through mesh_unitary; 65 modes takes the elementwise backward sweep."""
    from pnndeploy.platforms.mesh_jacobian import complex_loss_and_gradient

    g = torch.Generator().manual_seed(n)
    A, B, C = (torch.randn(3, n, n, dtype=torch.float64, generator=g) for _ in range(3))
    phases = torch.rand(3, n * n, dtype=torch.float64, generator=g) * 2 * np.pi
    ratios = 0.5 + 0.08 * torch.randn(3, mzi_count(n), 2, dtype=torch.float64, generator=g)

    def loss(U):
        return (A * U.real + B * U.imag + C * U.real * U.imag ** 2).sum((-2, -1))

    value, grad = complex_loss_and_gradient(phases, n, ratios, lambda U: (
        loss(U), torch.complex(A + C * U.imag ** 2, B + 2 * C * U.real * U.imag)))
    x = phases.clone().requires_grad_(True)
    reference = loss(mesh_unitary(x, n, ratios))
    reference.sum().backward()
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, x.grad, rtol=1e-9, atol=1e-10 * float(x.grad.abs().max()))
    assert float(x.grad[:, -n:].abs().max()) > 1e-3                 # the output phases' gradients are tested


def test_metric_is_the_damped_gauss_newton_inverse_and_holds_fixed_phases() -> None:
    n = 4
    phases, ratios = _random_meshes(n, 2, seed=1)
    weight = torch.ones(2, n, n, dtype=torch.float64)
    weight[:, 3] = 0.0                                                  # a padded output row
    metric = gauss_newton_metric(phases, n, ratios, weight, damping=1e-2)
    J = (real_jacobian(phases, n, ratios) * weight[:, None]).flatten(2)
    expected = torch.linalg.inv(2 * (J @ J.transpose(1, 2) + 1e-2 * torch.eye(n * n, dtype=torch.float64)))
    torch.testing.assert_close(metric, expected, atol=1e-9, rtol=1e-9)
    free = torch.ones(2, n * n, dtype=torch.bool)
    free[:, [0, 5, 13]] = False
    held = gauss_newton_metric(phases, n, ratios, weight, free, damping=1e-2)
    gradient = torch.randn(2, n * n, dtype=torch.float64) * free
    step = (held @ gradient[..., None])[..., 0]
    assert torch.all(step[~free] == 0)


@pytest.mark.parametrize("size", [1, 5, SPD_LEAF, SPD_LEAF + 1, 2 * SPD_LEAF + 3, 256])
def test_spd_inverse_by_halves_is_the_inverse(size: int) -> None:
    g = torch.Generator().manual_seed(size)
    R = torch.randn(3, size, size, dtype=torch.float64, generator=g)
    A = R @ R.transpose(1, 2) + 1e-3 * torch.eye(size, dtype=torch.float64)       # condition up to about 1e7
    inverse = spd_inverse(A)
    torch.testing.assert_close(inverse, torch.linalg.inv(A), rtol=1e-6, atol=1e-6 * float(inverse.abs().max()))
    torch.testing.assert_close(inverse, inverse.transpose(1, 2), rtol=1e-9, atol=1e-9 * float(inverse.abs().max()))


def test_spd_inverse_of_a_matrix_does_not_depend_on_its_batch() -> None:
    """A chip's mapping must not depend on the chips mapped with it: each inverse has the same bits alone."""
    g = torch.Generator().manual_seed(3)
    R = torch.randn(6, 200, 200, generator=g)
    A = R @ R.transpose(1, 2) + 0.1 * torch.eye(200)
    together = spd_inverse(A)
    for k in (0, 4):
        assert torch.equal(spd_inverse(A[k:k + 1])[0], together[k])


@pytest.mark.parametrize("size, where", [(5, "leaf"), (100, "first half"), (100, "Schur complement")])
def test_a_matrix_that_is_not_positive_definite_gets_nan_not_a_partial_inverse(size: int, where: str) -> None:
    """A failed Cholesky factor (a metric not positive definite in float32) gives that matrix NaN throughout,
    through the halves too; the others of the batch keep their bits."""
    g = torch.Generator().manual_seed(size)
    R = torch.randn(3, size, size, generator=g)
    A = R @ R.transpose(1, 2) + 0.1 * torch.eye(size)
    bad = A.clone()
    if where == "Schur complement":                   # A11 fine, S = A22 - A12^T A11^-1 A12 indefinite
        bad[1, size - 1, size - 1] = -50.0
    else:
        bad[1, 0, 0] = -50.0
    inverse = spd_inverse(bad)
    assert torch.isnan(inverse[1]).all()
    for k in (0, 2):
        assert torch.equal(inverse[k], spd_inverse(A)[k])


def test_a_problem_whose_metric_could_not_be_formed_runs_as_plain_lbfgs() -> None:
    """A problem whose metric is NaN (spd_inverse could not form it) starts from gamma I, as without a metric: its
    result is plain L-BFGS's, bit for bit, not its start; the others run as they run without it."""
    Q, b, fun = _quadratics(seed=4, size=5, ridge=0.5)
    x0 = torch.zeros(3, 5, dtype=torch.float64)
    metric = torch.linalg.inv(Q)
    broken = metric.clone()
    broken[1] = float("nan")
    x = batched_lbfgs(fun, x0, iterations=20, metric=broken)
    assert torch.equal(x[0], batched_lbfgs(fun, x0, iterations=20, metric=metric)[0])
    assert torch.equal(x[2], batched_lbfgs(fun, x0, iterations=20, metric=metric)[2])
    assert torch.equal(x[1], batched_lbfgs(fun, x0, iterations=20)[1])
    torch.testing.assert_close(x[1], torch.linalg.solve(Q[1], b[1]), atol=1e-6, rtol=0)


def test_metric_of_a_16_mode_mesh_holds_fixed_phases_exactly() -> None:
    """At 16 modes (256 phases) the metric is inverted by halves: a fixed phase still gets exactly no step, and the
    float32 metric is the float64 one to the precision its conditioning allows."""
    n = 16
    phases, ratios = _random_meshes(n, 2, seed=4)
    weight = torch.ones(2, n, n, dtype=torch.float64)
    free = torch.ones(2, n * n, dtype=torch.bool)
    free[0, [0, 7, 130, 250]] = False                                   # both halves of the metric
    exact = gauss_newton_metric(phases, n, ratios, weight, free, damping=1e-2)
    metric = gauss_newton_metric(phases.float(), n, ratios.float(), weight.float(), free, damping=1e-2)
    step = (metric @ (torch.randn(2, n * n) * free)[..., None])[..., 0]
    assert torch.all(step[~free] == 0)
    held = metric[0][~free[0]]                                          # their rows: 1 / (2 damping) on the diagonal
    assert torch.all(held[:, free[0]] == 0)
    error = (metric.double() - exact).norm(dim=(1, 2)) / exact.norm(dim=(1, 2))
    assert float(error.max()) < 1e-3


def test_metric_of_a_mesh_does_not_depend_on_its_batch_or_on_shared_arguments() -> None:
    """More meshes than one pass of the metric: each mesh's metric is the same bits alone; a weight, ratios or
    free mask given once (leading size 1) serves every mesh of every pass."""
    from pnndeploy.platforms.mesh_jacobian import METRIC_MESHES_PER_PASS

    n, count = 4, METRIC_MESHES_PER_PASS + 5
    phases, ratios = (v.float() for v in _random_meshes(n, count, seed=6))
    weight = torch.ones(count, n, n)
    weight[:, 3] = 0.0
    free = torch.ones(count, n * n, dtype=torch.bool)
    free[:, 2] = False
    metric = gauss_newton_metric(phases, n, ratios, weight, free, damping=1e-2)
    for k in (0, METRIC_MESHES_PER_PASS + 3):
        alone = gauss_newton_metric(phases[k:k + 1], n, ratios[k:k + 1], weight[k:k + 1], free[k:k + 1], 1e-2)
        assert torch.equal(alone[0], metric[k])
    shared = gauss_newton_metric(phases, n, ratios[:1].expand(count, -1, -1).clone(), weight[:1], free[:1], 1e-2)
    each = gauss_newton_metric(phases, n, ratios[:1].expand(count, -1, -1).clone(), weight, free, 1e-2)
    assert torch.equal(shared, each)
    assert torch.equal(gauss_newton_metric(phases, n, ratios[:1], weight, free, 1e-2), each)


def _quadratics(seed: int, size: int, ridge: float):
    """Three random convex quadratics 0.5 x^T Q x - b^T x (Q, b) and their batched_lbfgs objective."""
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(3, size, size, dtype=torch.float64, generator=g)
    Q = R @ R.transpose(1, 2) + ridge * torch.eye(size, dtype=torch.float64)
    b = torch.randn(3, size, dtype=torch.float64, generator=g)

    def fun(x, rows):
        Qx = (Q[rows] @ x[..., None])[..., 0]
        return 0.5 * (x * Qx).sum(-1) - (b[rows] * x).sum(-1), Qx - b[rows]

    return Q, b, fun


def test_an_exact_metric_solves_a_quadratic_in_one_step() -> None:
    """With the inverse Hessian as its metric, batched L-BFGS's first step is the Newton step."""
    Q, b, fun = _quadratics(seed=2, size=5, ridge=0.5)
    x = batched_lbfgs(fun, torch.zeros(3, 5, dtype=torch.float64), iterations=1, metric=torch.linalg.inv(Q))
    torch.testing.assert_close(x, torch.linalg.solve(Q, b), atol=1e-10, rtol=1e-10)
    plain = batched_lbfgs(fun, torch.zeros(3, 5, dtype=torch.float64), iterations=1)
    assert not torch.allclose(plain, torch.linalg.solve(Q, b), atol=1e-3)


def _old_fit(monkeypatch) -> None:
    """The fit this one replaced: L-BFGS from the identity, 80 iterations everywhere, 20 for a faulty chip's refit."""
    monkeypatch.setattr(mzi, "gauss_newton_metric", lambda *a, **k: None)
    for name in ("FIT_ITERATIONS", "PADDED_FIT_ITERATIONS", "FAULTY_FIT_ITERATIONS"):
        monkeypatch.setattr(mzi, name, 80)
    monkeypatch.setattr(mzi, "REFIT_ITERATIONS", 20)


@pytest.mark.parametrize("shape, faults", [((16, 32), False), ((10, 32), False), ((16, 32), True)])
def test_the_gauss_newton_fit_leaves_less_residual_than_the_old_fit(monkeypatch, shape, faults) -> None:
    """The mapping fit from the Gauss-Newton metric against the fit it replaced, on the same chips: full and padded
    blocks, and chips with faulty shifters (and crosstalk: the refit runs): less residual on average, no chip much
    worse."""
    process = load_process(MZI_PROFILES / "process.yaml")
    chips = [generate_chip(process, f"chipJ{k}", seed=5) for k in range(4)]
    calibrations = [c.calibration for c in chips]
    if faults:
        rng = np.random.default_rng(1)
        for k, cal in enumerate(calibrations):
            flags = np.zeros(cal["phase_offset"].shape, dtype=np.uint8)
            flags[rng.choice(flags.size, 4, replace=False)] = 1
            calibrations[k] = {**cal, "faulty": flags}
    assert all(c.environment.crosstalk > 0 for c in chips)
    W, controls = _layer(shape=shape, seed=7)
    args = (W, controls, calibrations, [c.environment for c in chips], chips[0].shape, MZI.metadata())
    now = np.array([m.residual for m in MZI.map_fleet_layer(*args)])
    _old_fit(monkeypatch)
    before = np.array([m.residual for m in MZI.map_fleet_layer(*args)])
    assert now.mean() < before.mean()
    assert np.all(now < 1.1 * before)


def test_each_problem_stops_at_its_own_iteration_limit() -> None:
    """Per-problem limits: a problem given one step is where one step leaves it alone, whatever the others run."""
    Q, b, fun = _quadratics(seed=6, size=6, ridge=0.1)
    x0 = torch.zeros(3, 6, dtype=torch.float64)
    mixed = batched_lbfgs(fun, x0, iterations=torch.tensor([1, 30, 2]))
    torch.testing.assert_close(mixed[0], batched_lbfgs(fun, x0, iterations=1)[0], atol=0, rtol=0)
    torch.testing.assert_close(mixed[2], batched_lbfgs(fun, x0, iterations=2)[2], atol=0, rtol=0)
    torch.testing.assert_close(mixed[1], torch.linalg.solve(Q[1], b[1]), atol=1e-5, rtol=0)      # ran on


def test_a_mesh_above_the_metric_limit_is_fitted_from_the_identity(monkeypatch) -> None:
    """The metric is phases^2 per block: past METRIC_MAX_PHASES the fit runs as before (no metric, the plain
    iteration count) and still maps."""
    process = load_process(MZI_PROFILES / "process.yaml")
    chip = generate_chip(process, "chipJ0", seed=5)
    W, controls = _layer(shape=(16, 32), seed=7)
    args = (W, controls, chip.calibration, chip.environment, chip.shape, MZI.metadata())
    with_metric = MZI.map_layer(*args)

    def refuse(*a, **k):
        raise AssertionError("no metric above the limit")

    monkeypatch.setattr(mzi, "METRIC_MAX_PHASES", 16 * 16 - 1)
    monkeypatch.setattr(mzi, "gauss_newton_metric", refuse)
    plain = MZI.map_layer(*args)
    _old_fit(monkeypatch)
    monkeypatch.setattr(mzi, "gauss_newton_metric", refuse)
    assert plain.residual == pytest.approx(MZI.map_layer(*args).residual, rel=1e-12)
    assert with_metric.residual < plain.residual
