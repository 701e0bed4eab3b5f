"""Imaging a mask onto its inputs through a misaligned setup: rotation, shift and magnification by bilinear resampling.

Groundwork of the free-space platform (issue 14).  In a free-space setup each
output's weights are a 2-D mask that the input image is projected onto; a
misaligned setup sees, at mask pixel p, the input at ``q = A⁻¹ (p − c − t) + c``
with ``A = s · Rot(θ)`` about the image centre c, a shift t (pixels; µm divided by
the mask's pixel pitch) and a magnification s.  The input there is read by
bilinear interpolation, and light that falls outside the input frame is lost (zero).
The map is linear in the input, so a setup realises ``W_eff = W · B(θ, t, s)`` with
B the (n × n) resampling matrix: the form the fleet simulator needs.

Coordinates: x along columns, y along rows (downwards), θ in degrees from x towards
y, which turns the image clockwise as it is displayed.  Sample positions within 1e-9 px of a pixel centre are snapped to
it, so a rotation by a multiple of 90° of a square frame, or a shift by whole
pixels, is an exact permutation (no 1e-16 leak into neighbours).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Sample positions this close to a pixel centre (px) are taken as on it.
SNAP = 1e-9


@dataclass(frozen=True)
class Misalignment:
    """How a setup images the input onto the mask."""

    rotation_deg: float = 0.0
    shift_x_px: float = 0.0
    shift_y_px: float = 0.0
    scale: float = 1.0

    @classmethod
    def from_um(cls, rotation_deg: float, shift_x_um: float, shift_y_um: float, scale: float,
                pixel_pitch_um: float) -> "Misalignment":
        """A misalignment whose shifts are given in µm on the mask (pixel pitch in µm)."""
        if not pixel_pitch_um > 0:
            raise ValueError(f"pixel pitch {pixel_pitch_um} µm must be > 0")
        return cls(rotation_deg, shift_x_um / pixel_pitch_um, shift_y_um / pixel_pitch_um, scale)

    def as_array(self) -> np.ndarray:
        return np.array([self.rotation_deg, self.shift_x_px, self.shift_y_px, self.scale])

    def problem(self) -> str | None:
        """Why this is not a physical misalignment (None if it is)."""
        values = self.as_array()
        if not np.all(np.isfinite(values)):
            return "rotation, shift and scale must be finite numbers"
        if not self.scale > 0:
            return f"scale {self.scale} must be > 0 (a magnification)"
        return None


def source_positions(shape: tuple[int, int], rotation_deg: Any, shift_x: Any, shift_y: Any, scale: Any,
                     cos: Any = None, sin: Any = None) -> tuple[Any, Any]:
    """(y, x) input positions, each (rows*cols,), that mask pixels (row-major) see; numpy or torch values.

    ``cos``/``sin`` of the rotation may be passed in (torch tensors for a differentiable rotation).
    """
    rows, cols = shape
    if cos is None:
        theta = math.radians(float(rotation_deg))
        cos, sin = math.cos(theta), math.sin(theta)
    cy, cx = (rows - 1) / 2.0, (cols - 1) / 2.0
    py, px = np.divmod(np.arange(rows * cols), cols)
    if hasattr(cos, "new_tensor"):                      # torch: the grid as tensors of the rotation's dtype
        py, px = cos.new_tensor(py), cos.new_tensor(px)
    dx, dy = px - cx - shift_x, py - cy - shift_y
    # A⁻¹ = Rot(−θ) / s
    qx = (cos * dx + sin * dy) / scale + cx
    qy = (-sin * dx + cos * dy) / scale + cy
    return qy, qx


def _bilinear_taps(shape: tuple[int, int], misalignment: Misalignment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask pixel, input pixel, weight) of every bilinear tap that lands inside the input frame."""
    problem = misalignment.problem()
    if problem:
        raise ValueError(problem)
    rows, cols = shape
    qy, qx = source_positions(shape, misalignment.rotation_deg, misalignment.shift_x_px, misalignment.shift_y_px,
                              misalignment.scale)
    qy = np.where(np.abs(qy - np.round(qy)) < SNAP, np.round(qy), qy)
    qx = np.where(np.abs(qx - np.round(qx)) < SNAP, np.round(qx), qx)
    y0, x0 = np.floor(qy).astype(np.int64), np.floor(qx).astype(np.int64)
    fy, fx = qy - y0, qx - x0
    target = np.arange(rows * cols)
    out_t, out_s, out_w = [], [], []
    for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + oy, x0 + ox
        inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols) & (w != 0)
        out_t.append(target[inside])
        out_s.append((yy * cols + xx)[inside])
        out_w.append(w[inside])
    return np.concatenate(out_t), np.concatenate(out_s), np.concatenate(out_w)


def resampling_matrix(shape: tuple[int, int], misalignment: Misalignment) -> np.ndarray:
    """B (n × n), n = rows*cols: the misaligned image of input x on the mask is B @ x (row-major pixels)."""
    n = shape[0] * shape[1]
    target, source, weight = _bilinear_taps(shape, misalignment)
    B = np.zeros((n, n))
    np.add.at(B, (target, source), weight)
    return B


def blur_taps(shape: tuple[int, int], crosstalk: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask pixel, image pixel, weight) of the optical crosstalk: each pixel keeps 1 − c of its light and
    spills c/4 into each of its four neighbours (what falls off the frame is lost)."""
    rows, cols = shape
    n = rows * cols
    py, px = np.divmod(np.arange(n), cols)
    targets, sources, weights = [np.arange(n)], [np.arange(n)], [np.full(n, 1.0 - crosstalk)]
    if crosstalk:
        for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            yy, xx = py + dy, px + dx
            inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
            targets.append((yy * cols + xx)[inside])
            sources.append(np.arange(n)[inside])
            weights.append(np.full(int(inside.sum()), crosstalk / 4.0))
    return np.concatenate(targets), np.concatenate(sources), np.concatenate(weights)


def imaging_operator(shape: tuple[int, int], misalignment: Misalignment, crosstalk: float = 0.0) -> Any:
    """The setup's imaging as a sparse (n × n) matrix M = K · B: misaligned (B), then blurred (K) on the mask.

    A layer of mask weights W then computes ``W @ M @ x``: it realises ``W_eff = W @ M``.
    """
    from scipy import sparse

    n = shape[0] * shape[1]
    target, source, weight = _bilinear_taps(shape, misalignment)
    B = sparse.csr_matrix((weight, (target, source)), shape=(n, n))      # duplicate taps are summed
    if not crosstalk:
        return B
    target, source, weight = blur_taps(shape, crosstalk)
    return (sparse.csr_matrix((weight, (target, source)), shape=(n, n)) @ B).tocsr()


def frame_shape(n: int) -> tuple[int, int]:
    """The (rows, cols) frame a layer's ``n`` inputs are displayed as: the squarest factorisation (8 x 8 for
    64 inputs, 28 x 28 for 784, 8 x 16 for 128; a prime count is one row)."""
    rows = int(math.isqrt(n))
    while n % rows:
        rows -= 1
    return rows, n // rows


def resample(images: Any, shape: tuple[int, int], params: Any) -> Any:
    """Torch: the misaligned images (batch, rows*cols), differentiable in the images and in ``params``.

    ``params`` is a tensor (rotation_deg, shift_x_px, shift_y_px, scale).  Bilinear interpolation is
    piecewise linear in the sample positions, so the gradient in ``params`` exists almost everywhere.
    """
    import torch

    rows, cols = shape
    theta = params[0] * (math.pi / 180.0)
    qy, qx = source_positions(shape, None, params[1], params[2], params[3], torch.cos(theta), torch.sin(theta))
    y0, x0 = torch.floor(qy).detach(), torch.floor(qx).detach()
    fy, fx = qy - y0, qx - x0
    out = torch.zeros_like(images)
    for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = (y0 + oy).long(), (x0 + ox).long()
        inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
        index = torch.where(inside, yy * cols + xx, torch.zeros_like(yy))
        out = out + images[:, index] * (w * inside)
    return out
