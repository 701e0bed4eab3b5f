"""Groundwork of the free-space platform: misaligned imaging by bilinear resampling, and the finite-difference ascent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pnndeploy.platforms.imaging import Misalignment, resample, resampling_matrix
from pnndeploy.training.fd_sat import fd_ascent, fd_gradient

SHAPE = (8, 8)


def test_no_misalignment_is_the_identity():
    np.testing.assert_array_equal(resampling_matrix(SHAPE, Misalignment()), np.eye(64))


@pytest.mark.parametrize("quarter_turns", [1, 2, 3, 4])
def test_rotating_a_square_frame_by_90_degrees_is_exact(quarter_turns):
    image = np.random.default_rng(0).random(SHAPE)
    B = resampling_matrix(SHAPE, Misalignment(rotation_deg=90.0 * quarter_turns))
    assert set(np.unique(B)) <= {0.0, 1.0}                              # a permutation, nothing leaks
    # +90° in the (x = col, y = row) frame turns the image clockwise as displayed: np.rot90 with k = -1
    np.testing.assert_array_equal((B @ image.ravel()).reshape(SHAPE), np.rot90(image, k=-quarter_turns))


def test_a_whole_pixel_shift_moves_the_image_and_loses_what_leaves_the_frame():
    image = np.random.default_rng(1).random(SHAPE)
    seen = (resampling_matrix(SHAPE, Misalignment(shift_x_px=2.0, shift_y_px=-1.0)) @ image.ravel()).reshape(SHAPE)
    np.testing.assert_array_equal(seen[:-1, 2:], image[1:, :-2])
    assert np.all(seen[:, :2] == 0) and np.all(seen[-1] == 0)


def test_the_pixel_pitch_converts_micrometres_to_pixels():
    assert Misalignment.from_um(1.0, 16.0, -8.0, 1.1, pixel_pitch_um=8.0) == Misalignment(1.0, 2.0, -1.0, 1.1)
    with pytest.raises(ValueError, match="pitch"):
        Misalignment.from_um(0, 0, 0, 1, pixel_pitch_um=0)
    with pytest.raises(ValueError, match="scale"):
        resampling_matrix(SHAPE, Misalignment(scale=-1.0))


def test_torch_resampling_is_the_matrix():
    x = torch.rand(5, 64, dtype=torch.float64)
    m = Misalignment(rotation_deg=3.7, shift_x_px=0.4, shift_y_px=-1.3, scale=1.08)
    expected = x.numpy() @ resampling_matrix(SHAPE, m).T
    got = resample(x, SHAPE, torch.tensor(m.as_array(), dtype=torch.float64))
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_fd_gradient_is_exact_for_a_quadratic_with_a_full_block_of_probes():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((4, 4))
    A = A @ A.T
    b = rng.standard_normal(4)
    scale = np.array([2.0, 0.5, 0.5, 0.1])
    loss = lambda phi: 0.5 * (phi / scale) @ A @ (phi / scale) + b @ (phi / scale)   # noqa: E731
    phi = rng.standard_normal(4)
    np.testing.assert_allclose(fd_gradient(loss, phi, scale, probes=4, h=0.3, rng=rng), A @ (phi / scale) + b,
                               rtol=1e-9)


def test_fd_gradient_of_a_misaligned_loss_agrees_with_autograd():
    torch.manual_seed(0)
    x = torch.rand(64, 64, dtype=torch.float64)
    W = torch.randn(10, 64, dtype=torch.float64) / 8
    y = torch.randint(0, 10, (64,))
    scale = np.array([2.0, 2.0, 2.0, 0.1])                 # tolerances: 2°, 2 px, 2 px, ×1.1

    def loss_t(params: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(resample(x, SHAPE, params) @ W.T * 20, y)

    phi = np.array([1.3, 0.37, -0.61, 1.04])
    params = torch.tensor(phi, requires_grad=True)
    (grad,) = torch.autograd.grad(loss_t(params), params)
    analytic = grad.numpy() * scale                        # gradient in the scaled coordinates
    loss = lambda p: float(loss_t(torch.tensor(p)))        # noqa: E731
    estimate = fd_gradient(loss, phi, scale, probes=400, h=1e-4, rng=np.random.default_rng(3))
    assert np.dot(estimate, analytic) / (np.linalg.norm(estimate) * np.linalg.norm(analytic)) > 0.999
    np.testing.assert_allclose(estimate, analytic, rtol=0.05, atol=1e-3 * np.linalg.norm(analytic))
    adversarial = fd_ascent(loss, phi, scale, rho=0.5, probes=8, h=1e-4, rng=np.random.default_rng(4))
    assert np.linalg.norm((adversarial - phi) / scale) == pytest.approx(0.5)    # normalised: rho tolerance units
    assert loss(adversarial) > loss(phi)
