"""The rectangular (Clements) mesh of Mach-Zehnder interferometers: its unitary, and its decomposition.

An N-mode mesh has N columns; column c holds an MZI on every mode pair
(p, p+1) with p = c mod 2, c mod 2 + 2, ...: N(N-1)/2 MZIs in all, listed
column by column.  Each MZI is two directional couplers (power splitting
ratios r1, r2; 0.5 ideal) around an internal phase theta on the top arm,
after an external phase phi on the top input::

    B(r) = [[sqrt(r), i sqrt(1-r)], [i sqrt(1-r), sqrt(r)]]
    T    = B(r2) diag(e^{i theta}, 1) B(r1) diag(e^{i phi}, 1)

and a screen of N output phases psi follows the last column.  The controls of
one mesh are the flat vector ``[theta (M), phi (M), psi (N)]``, N^2 phases in
rad.  :func:`mesh_unitary` builds U in torch, once for everything: many meshes
at once (chips x blocks), any splitting ratios, differentiable in the phases
(training, fitting through a calibrated model) and on any torch device (fleets);
:func:`decompose` finds
the phases of an ideal mesh that realise a given unitary (Clements et al.,
Optica 3, 1460 (2016): null the lower triangle diagonal by diagonal, then move
the diagonal to the output screen).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np

TWO_PI = 2.0 * math.pi


@lru_cache(maxsize=None)
def mesh_layout(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and top mode of every MZI of an ``n``-mode mesh, in control order."""
    cols, tops = [], []
    for c in range(n):
        for p in range(c % 2, n - 1, 2):
            cols.append(c)
            tops.append(p)
    return np.array(cols, dtype=np.int64), np.array(tops, dtype=np.int64)


def mzi_count(n: int) -> int:
    """MZIs of an ``n``-mode mesh: n(n-1)/2."""
    return n * (n - 1) // 2


def phase_count(n: int) -> int:
    """Phases of an ``n``-mode mesh: theta and phi of every MZI, and n output phases (n^2 in all)."""
    return 2 * mzi_count(n) + n


@lru_cache(maxsize=None)
def _column_gathers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index arrays that assemble every column's two diagonals from the MZIs' entries in one gather.

    Column c multiplies U by a matrix with ``d0`` on the diagonal and ``d1`` on the pair-swapped diagonal:
    rows p, p+1 of an MZI on (p, p+1) get (t00, t11) and (t01, t10), a mode without an MZI keeps 1 and 0.
    Returns (index of d0 in [t00 | t11 | 1], index of d1 in [t01 | t10 | 0], each (n, n): column x row;
    the row permutation swapping each pair, (n, n)).
    """
    col_of, top = mesh_layout(n)
    m = len(col_of)
    g0 = np.full((n, n), 2 * m, dtype=np.int64)
    g1 = np.full((n, n), 2 * m, dtype=np.int64)
    perm = np.tile(np.arange(n), (n, 1))
    for c in range(n):
        idx = np.flatnonzero(col_of == c)
        tops = top[idx]
        g0[c, tops], g0[c, tops + 1] = idx, m + idx
        g1[c, tops], g1[c, tops + 1] = idx, m + idx
        perm[c, tops], perm[c, tops + 1] = tops + 1, tops
    return g0, g1, perm


def _mzi_entries(xp: Any, theta: Any, phi: Any, r1: Any, r2: Any) -> tuple[Any, Any, Any, Any]:
    """The 2x2 transfer matrix entries (t00, t01, t10, t11) of MZIs, elementwise (numpy or torch).

    Written in real arithmetic and made complex at the end: torch's vectorised complex product rounds
    differently from its scalar one, so complex products over a batch gave a chip's mesh other last bits
    depending on the chips evaluated with it; real products round the same way in every lane.
    """
    s1, c1 = xp.sqrt(r1), xp.sqrt(1.0 - r1)
    s2, c2 = xp.sqrt(r2), xp.sqrt(1.0 - r2)
    ct, st, cp, sp = xp.cos(theta), xp.sin(theta), xp.cos(phi), xp.sin(phi)
    a, b = (s1 * s2) * ct - c1 * c2, (s1 * s2) * st            # s1 s2 e^{i theta} - c1 c2
    c, d = (s1 * c2) * ct + c1 * s2, (s1 * c2) * st            # s1 c2 e^{i theta} + c1 s2
    t00 = (a * cp - b * sp, a * sp + b * cp)                     # e^{i phi} (a + i b)
    t01 = (-(c1 * s2) * st, (c1 * s2) * ct + s1 * c2)            # i (c1 s2 e^{i theta} + s1 c2)
    t10 = (-(c * sp + d * cp), c * cp - d * sp)                  # i e^{i phi} (c + i d)
    t11 = (s1 * s2 - (c1 * c2) * ct, -(c1 * c2) * st)            # s1 s2 - c1 c2 e^{i theta}
    make = (lambda re, im: re + 1j * im) if xp is np else xp.complex
    return tuple(make(*part) for part in (t00, t01, t10, t11))


def mesh_unitary(phases: Any, n: int, ratios: Any = None, aligned: bool = False, kernel: bool = True) -> Any:
    """U of meshes (torch), (..., n, n), from phases (..., n^2) and splitting ratios (..., M, 2) (None: ideal 0.5).

    Leading axes broadcast (chips x blocks of phases with chips x 1 x 1 x M x 2 ratios); the complex dtype
    follows the phases' (complex64 for float32), the device too; differentiable in phases and ratios.

    ``aligned`` (fleets): each mesh's U the same bits whatever the meshes computed with it.  torch's vectorised
    cos, sin and complex product round differently from its scalar ones, and which elements take the scalar
    path depends on where a vector loop (or a thread's share of it) ends.  So each mesh's per-MZI and per-mode
    vectors are padded to whole vector blocks (:data:`ALIGN` elements), and the caller runs this on one thread
    (:func:`pnndeploy.threads.one_thread`) so no thread boundary falls inside a mesh; the column products go row by row.
    Aligned meshes without a gradient are realised by the compiled kernel once it has taken over
    (:mod:`mesh_kernel`: the same bits, 3-4x faster); ``kernel=False`` keeps them in torch.
    """
    import torch

    wants_grad = torch.is_grad_enabled() and (phases.requires_grad or (ratios is not None and ratios.requires_grad))
    if aligned and kernel and not wants_grad:
        from pnndeploy.platforms import mesh_kernel

        if mesh_kernel.takes(n, phases, ratios):
            return mesh_kernel.unitaries(phases, n, ratios)
    m = mzi_count(n)
    theta, phi, psi = phases[..., :m], phases[..., m:2 * m], phases[..., 2 * m:]
    if ratios is None:
        r1 = r2 = torch.full((m,), 0.5, dtype=phases.dtype, device=phases.device)
    else:
        r1, r2 = ratios[..., 0], ratios[..., 1]
    if aligned:
        theta, phi, r1, r2 = (padded(v, 0.5 if k > 1 else 0.0) for k, v in enumerate((theta, phi, r1, r2)))
    t00, t01, t10, t11 = (t[..., :m] for t in _mzi_entries(torch, theta, phi, r1, r2))
    # numpy's broadcast: torch's imports sympy on its first call (0.3 s) and costs 0.2 ms a call after
    batch = np.broadcast_shapes(tuple(t00.shape[:-1]), tuple(psi.shape[:-1]))
    d0, d1, perm = column_diagonals((t00, t01, t10, t11), n)
    if wants_grad:
        U = torch.eye(n, dtype=t00.dtype, device=phases.device).expand(*batch, n, n)
        for c in range(n):      # row-wise products (one factor per row): every lane of a row rounds alike
            U = d0[..., c, :, None] * U + d1[..., c, :, None] * U[..., perm[c], :]
    else:
        U = _columns_in_place(d0, d1, perm, batch, n)
    psi_ = padded(psi, 0.0) if aligned else psi
    screen = torch.complex(torch.cos(psi_), torch.sin(psi_))[..., :n]
    return screen[..., :, None] * U


@lru_cache(maxsize=None)
def column_layout(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each column's MZIs and lone modes, for loops over columns: (``starts`` (n + 1,): column c's MZIs are
    ``starts[c]:starts[c + 1]`` in control order; their top modes ``tops`` (M,); ``lone`` (n, 2): the modes of
    column c with no MZI, -1 where fewer than two).  Read-only."""
    col_of, top = mesh_layout(n)
    starts = np.searchsorted(col_of, np.arange(n + 1)).astype(np.int64)
    lone = np.full((n, 2), -1, dtype=np.int64)
    for c in range(n):
        tops = top[starts[c]:starts[c + 1]]
        free = np.setdiff1d(np.arange(n), np.concatenate([tops, tops + 1]))
        lone[c, :len(free)] = free
    for a in (starts, lone):
        a.flags.writeable = False
    return starts, top, lone


def column_diagonals(entries: tuple[Any, Any, Any, Any], n: int) -> tuple[Any, Any, Any]:
    """Every column's matrix as two diagonals (torch, (..., column, row)) from the MZIs' entries (t00, t01, t10,
    t11), each (..., M): ``d0`` on the diagonal, ``d1`` on the pair-swapped one (:func:`_column_gathers`), and the
    row permutation ``perm`` (column, row) that swaps each MZI's pair; a mode without an MZI keeps 1 and 0."""
    import torch

    t00, t01, t10, t11 = entries
    g0, g1, perm = (torch.from_numpy(a).to(t00.device) for a in _column_gathers(n))
    one = torch.ones((*t00.shape[:-1], 1), dtype=t00.dtype, device=t00.device)
    d0 = torch.cat([t00, t11, one], dim=-1)[..., g0]
    d1 = torch.cat([t01, t10, 0 * one], dim=-1)[..., g1]
    return d0, d1, perm


def _columns_in_place(d0: Any, d1: Any, perm: Any, batch: Any, n: int) -> Any:
    """The column products of :func:`mesh_unitary` without autograd: the same products and sums (so the same
    bits), into two buffers reused for every column instead of four new tensors a column."""
    import torch

    U = torch.eye(n, dtype=d0.dtype, device=d0.device).expand(*batch, n, n).contiguous()
    swapped = torch.empty_like(U)
    for c in range(n):
        torch.index_select(U, -2, perm[c], out=swapped)
        swapped.mul_(d1[..., c, :, None])
        U.mul_(d0[..., c, :, None]).add_(swapped)
    return U


#: Bytes of unitaries (complex64) one call of :func:`mesh_unitary` builds at once where a fleet realises many meshes
#: (:func:`meshes_per_pass`): each column's products then stay in a core's cache.  Measured per mesh on one thread
#: (``aligned``), passes of 2 KiB to 8 MiB: 512 KiB was the fastest at 16, 32, 64 and 128 modes, and a pass of 256
#: meshes (what a fixed count gave every size) was 1.5x slower at 32 modes and 1.6x at 64 (745 against 456 us).
PASS_BYTES = 512 * 1024


#: Bytes of unitaries a pass holds where the compiled kernel realises them (:mod:`mesh_kernel`): it keeps one mesh
#: in L1 whatever the pass, so a pass is as large as this bound on its output allows (fewer calls, fewer copies).
KERNEL_PASS_BYTES = 64 * 2 ** 20


def meshes_per_pass(n: int, kernel: bool = False) -> int:
    """How many ``n``-mode meshes a pass of :data:`PASS_BYTES` holds (one at least): 256 of 16 modes, 16 of 64;
    of :data:`KERNEL_PASS_BYTES` where the compiled kernel realises them (``kernel``: the same bits either way)."""
    return max(1, (KERNEL_PASS_BYTES if kernel else PASS_BYTES) // (8 * n * n))


#: Elements (float32) a padded per-mesh vector is rounded up to: two AVX-512 vectors, what torch's vectorised loop
#: handles per step, so no mesh's elements meet the loop's scalar remainder.
ALIGN = 32


def aligned_length(k: int) -> int:
    """``k`` rounded up to a whole number of :data:`ALIGN` blocks: the length :func:`padded` gives."""
    return -(-k // ALIGN) * ALIGN


def padded(values: Any, fill: float) -> Any:
    """``values`` (..., k) padded along the last axis with ``fill`` to a multiple of :data:`ALIGN`, contiguous."""
    import torch

    k = values.shape[-1]
    extra = aligned_length(k) - k
    if not extra:
        return values.contiguous()
    pad = torch.full((*values.shape[:-1], extra), fill, dtype=values.dtype, device=values.device)
    return torch.cat([values, pad], dim=-1)


# ------------------------------------------------------------------------------------------ decomposition
def _ideal(theta: float, phi: float) -> np.ndarray:
    t = _mzi_entries(np, np.float64(theta), np.float64(phi), 0.5, 0.5)
    return np.array([[t[0], t[1]], [t[2], t[3]]])


def decompose(U: np.ndarray) -> np.ndarray:
    """Phases ``[theta, phi, psi]`` (n^2, rad in [0, 2 pi)) of an ideal n-mode mesh that realises unitary U."""
    V = np.array(U, dtype=np.complex128)
    n = V.shape[0]
    right: list[tuple[int, float, float]] = []   # (top mode, theta, phi), applied V <- V T^dagger
    left: list[tuple[int, float, float]] = []    # applied V <- T V
    for k in range(1, n):
        for j in range(k):
            if k % 2:     # null V[n-1-j, k-1-j] with the columns (c, c+1)
                r, c = n - 1 - j, k - 1 - j
                a, b = V[r, c], V[r, c + 1]
                theta = 2.0 * math.atan2(abs(b), abs(a))
                phi = (np.angle(a) - np.angle(b) + math.pi) if abs(b) > 0 and abs(a) > 0 else 0.0
                T = _ideal(theta, phi)
                V[:, c:c + 2] = V[:, c:c + 2] @ T.conj().T
                right.append((c, theta, phi))
            else:         # null V[n-k+j, j] with the rows (r-1, r)
                r, c = n - k + j, j
                a, b = V[r - 1, c], V[r, c]
                theta = 2.0 * math.atan2(abs(a), abs(b))
                phi = (np.angle(b) - np.angle(a)) if abs(a) > 0 and abs(b) > 0 else 0.0
                T = _ideal(theta, phi)
                V[r - 1:r + 1, :] = T @ V[r - 1:r + 1, :]
                left.append((r - 1, theta, phi))
    D = np.diag(V).copy()
    # U = L1^+ ... Lp^+ D R_q ... R_1; move D left through each L^+ (innermost first): L^+ D = D' T'
    moved: list[tuple[int, float, float]] = []
    for top, theta, phi in reversed(left):
        d1, d2 = D[top], D[top + 1]
        phi_new = float(np.angle(d1) - np.angle(d2))
        product = _ideal(theta, phi).conj().T @ np.diag([d1, d2]) @ _ideal(theta, phi_new).conj().T
        D[top], D[top + 1] = product[0, 0], product[1, 1]
        moved.append((top, theta, phi_new))
    # physical order: R_1 ... R_q, then the moved L's from the innermost out (L'_p first)
    sequence = right + moved
    col_of, tops = mesh_layout(n)
    slot = {(int(c), int(p)): i for i, (c, p) in enumerate(zip(col_of, tops))}
    m = mzi_count(n)
    phases = np.zeros(phase_count(n))
    front = [0] * n
    for top, theta, phi in sequence:
        c = max(front[top], front[top + 1])
        if c % 2 != top % 2:
            c += 1
        i = slot[(c, top)]
        phases[i], phases[m + i] = theta, phi
        front[top] = front[top + 1] = c + 1
    phases[2 * m:] = np.angle(D)
    return np.mod(phases, TWO_PI)


def corrected_phases(phases: np.ndarray, ratios: np.ndarray, n: int) -> np.ndarray:
    """Phases (..., n^2) for meshes whose couplers have splitting ratios (..., M, 2) that realise what the ideal
    mesh (0.5 everywhere) realises at ``phases``, as nearly as each MZI can (numpy, float64).

    MZI by MZI in the order light meets them, each imperfect MZI is set to the ideal one's 2 x 2 transfer up to a
    phase on each of its outputs: theta from the power split (clipped where the couplers cannot reach it), phi
    from the relative phase of its two columns; the output phases it leaves (and those left upstream, which it
    takes as input) are carried forward and cancelled by the output screen.  Exact where every split is
    reachable; elsewhere a start for a fit.
    """
    m = mzi_count(n)
    theta0, phi0, psi0 = phases[..., :m], phases[..., m:2 * m], phases[..., 2 * m:]
    r1, r2 = np.broadcast_to(ratios[..., 0], theta0.shape), np.broadcast_to(ratios[..., 1], theta0.shape)
    ideal = _mzi_entries(np, theta0, phi0, 0.5, 0.5)
    col_of, top = mesh_layout(n)
    errors = np.ones((*theta0.shape[:-1], n), dtype=np.complex128)          # per-mode phase carried forward
    theta, phi = np.empty_like(theta0), np.empty_like(phi0)
    for c in range(n):
        idx = np.flatnonzero(col_of == c)
        p = top[idx]
        e0, e1 = errors[..., p], errors[..., p + 1]
        M = (ideal[0][..., idx] * e0.conj(), ideal[1][..., idx] * e1.conj(),
             ideal[2][..., idx] * e0.conj(), ideal[3][..., idx] * e1.conj())
        a, b = np.sqrt(r1[..., idx] * r2[..., idx]), np.sqrt((1 - r1[..., idx]) * (1 - r2[..., idx]))
        cos_t = np.clip((a * a + b * b - np.abs(M[0]) ** 2) / np.maximum(2 * a * b, 1e-300), -1.0, 1.0)
        t = np.where(np.sin(theta0[..., idx]) < 0, -1.0, 1.0) * np.arccos(cos_t)
        T = _mzi_entries(np, t, np.zeros_like(t), r1[..., idx], r2[..., idx])
        # phi turns column 0 against column 1: align T's column 0 with M's, measured against column 1
        phase = np.angle(np.conj(T[0]) * M[0] * np.conj(M[1]) * T[1] + np.conj(T[2]) * M[2] * np.conj(M[3]) * T[3])
        T = (T[0] * np.exp(1j * phase), T[1], T[2] * np.exp(1j * phase), T[3])
        f0 = T[0] * np.conj(M[0]) + T[1] * np.conj(M[1])
        f1 = T[2] * np.conj(M[2]) + T[3] * np.conj(M[3])
        errors[..., p] = f0 / np.maximum(np.abs(f0), 1e-300)
        errors[..., p + 1] = f1 / np.maximum(np.abs(f1), 1e-300)
        theta[..., idx], phi[..., idx] = t, phase
    psi = psi0 - np.angle(errors)
    return np.mod(np.concatenate([theta, phi, psi], axis=-1), TWO_PI)


def unitary_with_real_part(W: np.ndarray) -> tuple[np.ndarray, int]:
    """A unitary U with Re(U) = W for a real square W whose singular values are <= 1.

    W = P S Q^T gives U = P (S + i sqrt(1 - S^2)) Q^T.  Singular values above 1
    cannot be realised: they are clipped to 1; returns (U, count clipped).
    """
    P, S, Qt = np.linalg.svd(np.asarray(W, dtype=np.float64))
    clipped = int(np.count_nonzero(S > 1.0 + 1e-9))
    S = np.minimum(S, 1.0)
    return (P * (S + 1j * np.sqrt(1.0 - S * S))) @ Qt, clipped
