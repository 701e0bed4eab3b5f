"""Imaging a mask onto its inputs through a misaligned setup: rotation, shift and magnification by bilinear resampling.

In a free-space setup each
output's weights are a 2-D mask that the input image is projected onto; a
misaligned setup sees, at mask pixel p, the input at ``q = A⁻¹ (p − c − t) + c``
with ``A = s · Rot(θ)`` about the image centre c, a shift t (pixels; µm divided by
the mask's pixel pitch) and a magnification s.  The input there is read by
bilinear interpolation, and light that falls outside the input frame is lost (zero).
The map is linear in the input, so a setup realises ``W_eff = W · B(θ, t, s)`` with
B the (n × n) resampling matrix.

One physics, in torch: :func:`imaging_taps` computes the four bilinear taps of every mask
pixel once; :func:`resample` applies them to a batch of images (training, differentiable in
the images and the misalignment) and :func:`imaging_operator` assembles them, with the
optical crosstalk, into a sparse matrix (fleets, mapping).  Tap positions are computed in
float64 whatever the images' dtype.

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


def imaging_taps(shape: tuple[int, int], params: Any) -> tuple[Any, Any]:
    """The bilinear taps of a misaligned relay: (source pixel, weight), each (4, rows*cols), torch.

    Mask pixel p (row-major) sees ``sum_k weight[k, p] * input[source[k, p]]``; a tap that falls outside
    the input frame has weight 0 (its light is lost).  ``params`` is a tensor (rotation_deg, shift_x_px,
    shift_y_px, scale); the weights are float64 and differentiable in it almost everywhere.  Positions within
    :data:`SNAP` px of a pixel centre are moved onto it with the gradient passed straight through.
    """
    import torch

    params = params.to(torch.float64)
    rows, cols = shape
    theta = params[0] * (math.pi / 180.0)
    qy, qx = source_positions(shape, None, params[1], params[2], params[3], torch.cos(theta), torch.sin(theta))
    qy = qy + ((torch.round(qy) - qy) * (torch.abs(qy - torch.round(qy)) < SNAP)).detach()
    qx = qx + ((torch.round(qx) - qx) * (torch.abs(qx - torch.round(qx)) < SNAP)).detach()
    y0, x0 = torch.floor(qy).detach(), torch.floor(qx).detach()
    fy, fx = qy - y0, qx - x0
    sources, weights = [], []
    for oy, ox, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        yy, xx = (y0 + oy).long(), (x0 + ox).long()
        inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
        sources.append(torch.where(inside, yy * cols + xx, torch.zeros_like(yy)))
        weights.append(w * inside)
    return torch.stack(sources), torch.stack(weights)


def _checked(misalignment: Misalignment) -> Any:
    """The misalignment as a float64 tensor, refused when it is not physical."""
    import torch

    problem = misalignment.problem()
    if problem:
        raise ValueError(problem)
    return torch.tensor(misalignment.as_array(), dtype=torch.float64)


def resampling_matrix(shape: tuple[int, int], misalignment: Misalignment) -> np.ndarray:
    """B (n × n), n = rows*cols, dense numpy: the misaligned image of input x on the mask is B @ x (row-major)."""
    return imaging_operator(shape, misalignment).to_dense().numpy()


def _blur_taps(shape: tuple[int, int], crosstalk: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image pixel, mask pixel, weight) of the optical crosstalk: each pixel keeps 1 − c of its light and spills
    c/4 into each of its four neighbours (what falls off the frame is lost)."""
    rows, cols = shape
    n = rows * cols
    py, px = np.divmod(np.arange(n), cols)
    targets, sources, weights = [np.arange(n)], [np.arange(n)], [np.full(n, 1.0 - crosstalk)]
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        yy, xx = py + dy, px + dx
        inside = (yy >= 0) & (yy < rows) & (xx >= 0) & (xx < cols)
        targets.append((yy * cols + xx)[inside])
        sources.append(np.arange(n)[inside])
        weights.append(np.full(int(inside.sum()), crosstalk / 4.0))
    return np.concatenate(targets), np.concatenate(sources), np.concatenate(weights)


def imaging_operator(shape: tuple[int, int], misalignment: Misalignment, crosstalk: float = 0.0,
                     dtype: Any = None, device: Any = "cpu") -> Any:
    """The setup's imaging as a sparse (n × n) torch matrix M = K · B (COO, coalesced, float64 unless ``dtype``):
    misaligned (B: the taps of :func:`imaging_taps`), then blurred (K) on the mask.

    A layer of mask weights W then computes ``W @ M @ x``: it realises ``W_eff = W @ M``.  Entry (p, q) of M
    sums, over the blur's taps p <- r and the relay's taps r <- q, the product of their weights.
    """
    import torch

    n = shape[0] * shape[1]
    source, weight = imaging_taps(shape, _checked(misalignment))
    source, weight = source.numpy(), weight.detach().numpy()                    # (4, n): taps of each pixel r
    if crosstalk:
        target_k, r, weight_k = _blur_taps(shape, crosstalk)                    # p <- r
        rows = np.repeat(target_k[None], 4, axis=0)
        cols, values = source[:, r], weight[:, r] * weight_k[None]
    else:
        rows, cols, values = np.broadcast_to(np.arange(n), (4, n)), source, weight
    keep = values != 0
    index = torch.from_numpy(np.stack([rows[keep], cols[keep]]))
    M = torch.sparse_coo_tensor(index, torch.from_numpy(values[keep]), (n, n), check_invariants=True).coalesce()
    return M.to(device=device, dtype=dtype or torch.float64)


def is_identity(M: Any) -> bool:
    """True when a sparse operator is exactly the identity (an aligned setup without blur)."""
    import torch

    index, values = M.indices(), M.values()
    return bool(values.numel() == M.shape[0] and torch.equal(index[0], index[1]) and torch.all(values == 1))


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
    source, weight = imaging_taps(shape, params)
    weight = weight.to(images.dtype)
    out = images[:, source[0]] * weight[0]
    for k in range(1, 4):
        out = out + images[:, source[k]] * weight[k]
    return out
