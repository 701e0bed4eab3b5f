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


def resampling_matrix(shape: tuple[int, int], misalignment: Misalignment) -> np.ndarray:
    """B (n × n), n = rows*cols: the misaligned image of input x on the mask is B @ x (row-major pixels)."""
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
    n = rows * cols
    B = np.zeros((n, n))
    target = np.arange(n)
    for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = y0 + oy, x0 + ox
        inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols) & (w != 0)
        np.add.at(B, (target[inside], (yy * cols + xx)[inside]), w[inside])
    return B


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
