"""Optical operators that are not a weight matrix: intensity detection and free-space propagation.

Building blocks of platforms whose on-chip layer is not ``x -> W x`` (a mesh read by
intensity, a diffractive network), each in torch (differentiable, batched over
chips and samples, any device) and as standard ONNX operators (opset 17) that
onnxruntime runs:

* **intensity detection**: a photodiode reads the power of the field on it, |E|^2 =
  Re(E)^2 + Im(E)^2, which is quadratic in the field: :func:`intensity`,
  :func:`onnx_intensity_of_linear` (|U x|^2 of a complex matrix U acting on a real x);
* **propagation by the angular spectrum method** over a distance d: the field's
  plane-wave spectrum (2-D FFT) times ``H = exp(i 2 pi d sqrt(1/lambda^2 - fx^2 - fy^2))``
  (evanescent waves dropped), band-limited as Matsushima & Shimobaba (Opt. Express 17,
  19662, 2009) show is needed for the sampled H not to alias, on a grid zero-padded
  to twice the field so the circular convolution of the FFT is the linear one
  (:func:`angular_spectrum`, :func:`propagate`, :func:`onnx_propagate`).  The operator
  is never materialised as a matrix: an N x N field costs O(N^2 log N), and the ONNX
  graph uses the DFT operator.

Units: lengths in µm (pixel pitch, wavelength, distance), spatial frequencies in 1/µm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def intensity(field: Any) -> Any:
    """|E|^2 of a complex torch field, elementwise (what a detector reads)."""
    return field.real * field.real + field.imag * field.imag


def angular_spectrum(grid: int, pitch_um: float, wavelength_um: float, distance_um: float) -> np.ndarray:
    """The band-limited angular-spectrum transfer function H (grid x grid, complex128, FFT order) of a distance.

    ``grid`` is the padded grid's side (pixels of ``pitch_um``).  Plane waves with fx^2 + fy^2 >= 1/lambda^2 are
    evanescent and dropped; frequencies beyond the band limit 1 / (lambda sqrt((2 df d)^2 + 1)), df = 1/(grid
    pitch), would alias in the sampled phase and are dropped too.  d = 0 is the identity.
    """
    for name, value in (("grid", grid), ("pitch_um", pitch_um), ("wavelength_um", wavelength_um)):
        if not value > 0:
            raise ValueError(f"{name} {value} must be > 0")
    if not distance_um >= 0 or not math.isfinite(distance_um):
        raise ValueError(f"distance_um {distance_um} must be a finite distance >= 0")
    f = np.fft.fftfreq(grid, d=pitch_um)
    fx, fy = np.meshgrid(f, f, indexing="xy")
    argument = 1.0 / wavelength_um ** 2 - fx ** 2 - fy ** 2
    propagating = argument > 0
    kz = 2.0 * math.pi * np.sqrt(np.where(propagating, argument, 0.0))
    limit = 1.0 / (wavelength_um * math.sqrt((2.0 * distance_um / (grid * pitch_um)) ** 2 + 1.0))
    passed = propagating & (np.abs(fx) < limit) & (np.abs(fy) < limit)
    return np.where(passed, np.exp(1j * kz * distance_um), 0.0)


def propagate(field: Any, H: Any) -> Any:
    """The field (..., grid, grid), complex torch, after the distance whose transfer function is ``H``."""
    import torch

    return torch.fft.ifft2(torch.fft.fft2(field) * H)


# ------------------------------------------------------------------------------------------------ ONNX
def _initializer(name: str, value: np.ndarray) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.ascontiguousarray(value, dtype=np.float32), name)


def onnx_intensity_of_linear(prefix: str, U: np.ndarray, x_name: str, out_name: str) -> tuple[list[Any], list[Any]]:
    """Nodes computing ``|x U^T|^2`` (batch, out) for a real input x (batch, in) and a complex U (out, in):
    two Gemms (the real and imaginary parts of the field), squared and summed."""
    from onnx import helper

    re, im = f"{prefix}.field_re", f"{prefix}.field_im"
    nodes = [
        helper.make_node("Gemm", [x_name, f"{prefix}.U_re"], [re], transB=1, name=f"{prefix}.field_re"),
        helper.make_node("Gemm", [x_name, f"{prefix}.U_im"], [im], transB=1, name=f"{prefix}.field_im"),
        helper.make_node("Mul", [re, re], [f"{re}2"], name=f"{prefix}.power_re"),
        helper.make_node("Mul", [im, im], [f"{im}2"], name=f"{prefix}.power_im"),
        helper.make_node("Add", [f"{re}2", f"{im}2"], [out_name], name=f"{prefix}.intensity"),
    ]
    return nodes, [_initializer(f"{prefix}.U_re", U.real), _initializer(f"{prefix}.U_im", U.imag)]


#: The parts of :func:`onnx_complex_multiply` that are initializers (the others are its nodes' outputs).
CONSTANT_PARTS = ("b_re", "b_im", "index0", "index1", "last")


def onnx_complex_multiply(prefix: str, a_name: str, b: np.ndarray, out_name: str,
                          constants: str | None = None) -> tuple[list[Any], list[Any]]:
    """Nodes multiplying a complex tensor ``a`` (..., 2: real, imaginary) by a constant complex array ``b``
    (broadcasting over the leading axes): (ar br - ai bi, ar bi + ai br).  The initializers are named after
    ``constants`` (default ``prefix``): products by one ``b`` sharing it store it once, when the caller keeps one
    initializer per name."""
    from onnx import helper, numpy_helper

    def name(part: str) -> str:
        return f"{constants or prefix}.{part}" if part in CONSTANT_PARTS else f"{prefix}.{part}"

    nodes = [helper.make_node("Gather", [a_name, name(f"index{k}")], [name(part)], axis=-1, name=name(f"take_{part}"))
             for k, part in enumerate(("ar", "ai"))]
    products = {"ar_br": ("ar", "b_re"), "ai_bi": ("ai", "b_im"), "ar_bi": ("ar", "b_im"), "ai_br": ("ai", "b_re")}
    nodes += [helper.make_node("Mul", [name(x), name(y)], [name(p)], name=name(p)) for p, (x, y) in products.items()]
    nodes += [helper.make_node("Sub", [name("ar_br"), name("ai_bi")], [name("real")], name=name("real")),
              helper.make_node("Add", [name("ar_bi"), name("ai_br")], [name("imag")], name=name("imag"))]
    nodes += [helper.make_node("Unsqueeze", [name(p), name("last")], [name(f"{p}1")], name=name(f"unsqueeze_{p}"))
              for p in ("real", "imag")]
    nodes.append(helper.make_node("Concat", [name("real1"), name("imag1")], [out_name], axis=-1, name=name("complex")))
    inits = [_initializer(name("b_re"), b.real), _initializer(name("b_im"), b.imag),
             *(numpy_helper.from_array(np.array(k, dtype=np.int64), name(f"index{k}")) for k in (0, 1)),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), name("last"))]
    return nodes, inits


def onnx_propagate(prefix: str, field_name: str, H: np.ndarray, out_name: str,
                   constants: str | None = None) -> tuple[list[Any], list[Any]]:
    """Nodes propagating a complex field (batch, grid, grid, 2) through ``H``: a 2-D DFT (two DFT operators along
    the grid's axes), the product with H, and the inverse 2-D DFT (which divides by grid^2, as ifft2).  H's
    initializers are named after ``constants`` (default ``{prefix}.H``), so propagations over one distance can
    share them."""
    from onnx import helper

    nodes = [helper.make_node("DFT", [field_name], [f"{prefix}.fx"], axis=1, inverse=0, onesided=0,
                              name=f"{prefix}.dft_y"),
             helper.make_node("DFT", [f"{prefix}.fx"], [f"{prefix}.spectrum"], axis=2, inverse=0, onesided=0,
                              name=f"{prefix}.dft_x")]
    product, inits = onnx_complex_multiply(f"{prefix}.H", f"{prefix}.spectrum", H, f"{prefix}.propagated", constants)
    nodes += product
    nodes += [helper.make_node("DFT", [f"{prefix}.propagated"], [f"{prefix}.ix"], axis=1, inverse=1, onesided=0,
                               name=f"{prefix}.idft_y"),
              helper.make_node("DFT", [f"{prefix}.ix"], [out_name], axis=2, inverse=1, onesided=0,
                               name=f"{prefix}.idft_x")]
    return nodes, inits
