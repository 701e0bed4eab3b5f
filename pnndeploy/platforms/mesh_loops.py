"""The compiled loops of :mod:`mesh_kernel` (numba): one mesh at a time, its unitary held in L1.

Every step is the IEEE operation torch performs in :func:`mesh._mzi_entries`, :func:`mesh._columns_in_place` and
the output screen of :func:`mesh.mesh_unitary`, on the same operands in the same order (numba fuses no multiply and
add unless asked; nothing here asks), so a mesh's U is the same bits as torch's (checked in the tests).  Imported
only where numba is installed and the kernel has taken over (:func:`mesh_kernel.takes`); compiled at first call,
with no on-disk cache (numba's is pickled).
"""

from __future__ import annotations

import numba
import numpy as np

_jit = numba.njit(nogil=True, error_model="numpy", boundscheck=False)


@_jit
def _rows_times_mzi(ur, ui, p, t00r, t00i, t01r, t01i, t10r, t10i, t11r, t11i):  # pragma: no cover - compiled
    """Rows p, p+1 of U times an MZI: U[p] t00 + U[p+1] t01, U[p+1] t11 + U[p] t10, as torch's ``U.mul_(d0)``,
    ``swapped.mul_(d1)`` and ``U.add_(swapped)`` form them: its add multiplies the addend by alpha = 1 + 0i (the
    second term's real part minus 0 times its imaginary one, and so on), which turns some -0.0 into 0.0."""
    zero = np.float32(0.0)
    for j in range(ur.shape[1]):
        xr, xi, yr, yi = ur[p, j], ui[p, j], ur[p + 1, j], ui[p + 1, j]
        br, bi = yr * t01r - yi * t01i, yr * t01i + yi * t01r
        ur[p, j] = (xr * t00r - xi * t00i) + (br - bi * zero)
        ui[p, j] = (xr * t00i + xi * t00r) + (br * zero + bi)
        br, bi = xr * t10r - xi * t10i, xr * t10i + xi * t10r
        ur[p + 1, j] = (yr * t11r - yi * t11i) + (br - bi * zero)
        ui[p + 1, j] = (yr * t11i + yi * t11r) + (br * zero + bi)


@_jit
def _mesh(ur, ui, cos, sin, k0, f, terms, starts, tops, lone):  # pragma: no cover - compiled
    """U of mesh ``f`` before its screen into ``ur``, ``ui`` (n, n): the identity, then column by column each MZI's
    entries (mesh._mzi_entries) and products (mesh._columns_in_place: a mode without an MZI is itself times 1
    plus itself times 0, added as above).  ``cos``, ``sin``: of the aligned angles (theta at 0, phi at ``k0``);
    ``terms`` (K, 4): the MZIs' coupler products (torch's, :func:`mesh_kernel.coupler_terms`)."""
    n = ur.shape[0]
    one, zero = np.float32(1.0), np.float32(0.0)
    for i in range(n):
        for j in range(n):
            ur[i, j] = zero
            ui[i, j] = zero
        ur[i, i] = one
    for c in range(n):
        for k in range(starts[c], starts[c + 1]):
            s1s2, c1c2, s1c2, c1s2 = terms[k, 0], terms[k, 1], terms[k, 2], terms[k, 3]
            ct, st, cp, sp = cos[f, k], sin[f, k], cos[f, k0 + k], sin[f, k0 + k]
            a, b = s1s2 * ct - c1c2, s1s2 * st
            c_, d = s1c2 * ct + c1s2, s1c2 * st
            _rows_times_mzi(ur, ui, tops[k], a * cp - b * sp, a * sp + b * cp, -c1s2 * st, c1s2 * ct + s1c2,
                            -(c_ * sp + d * cp), c_ * cp - d * sp, s1s2 - c1c2 * ct, -c1c2 * st)
        for s in range(2):
            i = lone[c, s]
            if i >= 0:
                for j in range(n):
                    xr, xi = ur[i, j], ui[i, j]
                    br, bi = xr * zero - xi * zero, xr * zero + xi * zero
                    ur[i, j] = (xr * one - xi * zero) + (br - bi * zero)
                    ui[i, j] = (xr * zero + xi * one) + (br * zero + bi)


@_jit
def unitaries(cos, sin, k0, terms, rows_of_phases, rows_of_terms, starts, tops, lone, out):  # pragma: no cover
    """Every mesh's U, screen included, into ``out`` (meshes, n, n, 2): real and imaginary parts.  Mesh q: angles
    ``rows_of_phases[q]``, couplers ``terms[rows_of_terms[q]]``."""
    n = out.shape[1]
    ur, ui = np.empty((n, n), np.float32), np.empty((n, n), np.float32)
    for q in range(out.shape[0]):
        f = rows_of_phases[q]
        _mesh(ur, ui, cos, sin, k0, f, terms[rows_of_terms[q]], starts, tops, lone)
        for i in range(n):
            sr, si = cos[f, 2 * k0 + i], sin[f, 2 * k0 + i]
            for j in range(n):
                out[q, i, j, 0] = sr * ur[i, j] - si * ui[i, j]
                out[q, i, j, 1] = sr * ui[i, j] + si * ur[i, j]


@_jit
def real_blocks(cos, sin, k0, terms, starts, tops, lone, W):  # pragma: no cover - compiled
    """Re U of every chip's blocks into its weights ``W`` (chips, out, in), block (r, b) at rows r n.., columns
    b n.., cropped: meshes in (chip, block row, block column) order, chip c's couplers ``terms[c]``."""
    n = lone.shape[0]
    chips, out_f, in_f = W.shape
    to, ti = -(-out_f // n), -(-in_f // n)
    ur, ui = np.empty((n, n), np.float32), np.empty((n, n), np.float32)
    for chip in range(chips):
        for r in range(to):
            for b in range(ti):
                f = (chip * to + r) * ti + b
                _mesh(ur, ui, cos, sin, k0, f, terms[chip], starts, tops, lone)
                for i in range(min(n, out_f - r * n)):
                    sr, si = cos[f, 2 * k0 + i], sin[f, 2 * k0 + i]
                    for j in range(min(n, in_f - b * n)):
                        W[chip, r * n + i, b * n + j] = sr * ur[i, j] - si * ui[i, j]
