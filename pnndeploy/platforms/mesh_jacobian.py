"""Derivatives of a mesh's unitary in its phases, in closed form, for the mapping fits: the Jacobian of its real
part (a Gauss-Newton metric) and the fit loss's gradient (a forward and a backward sweep instead of autograd), for
a loss of Re U (the coherent mesh) or of the complex U (the mesh read by intensity).

Fitting a block's phases through a chip's mesh is a nearly square, ill-conditioned least-squares problem: a
first-order method with a scalar initial Hessian (plain L-BFGS) needs many iterations.  Its Gauss-Newton metric
J^T J, taken once at the fit's start, makes the first steps Gauss-Newton steps and leaves L-BFGS to correct it.

With U = S C_{N-1} ... C_0 (screen S, column c's matrix C_c, :mod:`pnndeploy.platforms.mesh`) and the partial
products P_c = C_{c-1} ... C_0 and L_c = S C_{N-1} ... C_{c+1}, an MZI of column c on modes (p, p+1) enters U
through one 2 x 2 block of C_c, so each of its phases moves U by an outer product (no autograd needed):

* dU/dphi   = i (L_c[:, p:p+2] T[:, 0]) (x) P_c[p, :]
* dU/dtheta = i e^{i theta} (L_c[:, p:p+2] [s2, i c2]) (x) ([s1 e^{i phi}, i c1] P_c[p:p+2, :])
* dU/dpsi_j = i U[j, :] on row j.

The gradient of ||w (Re U - target)||^2 contracts the same products with G = 2 w (Re U - target): with
Z_c = L_c^T G, each MZI's phases see only the 2 x 2 block of Z_c P_c^T on its modes (:func:`loss_and_gradient`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

from pnndeploy.platforms.mesh import _mzi_entries, column_diagonals, mesh_layout, mzi_count


def real_jacobian(phases: Any, n: int, ratios: Any) -> Any:
    """d Re(U) / d phases of meshes (torch): (B, n^2 phases, n, n) from phases (B, n^2), ratios (B, M, 2)."""
    import torch

    m = mzi_count(n)
    B = phases.shape[0]
    theta, phi, psi = phases[:, :m], phases[:, m:2 * m], phases[:, 2 * m:]
    r1, r2 = ratios[..., 0], ratios[..., 1]
    t00, t01, t10, t11 = _mzi_entries(torch, theta, phi, r1, r2)
    prefix, suffix, U = _partial_products((t00, t01, t10, t11), psi, n)
    col, top = (torch.from_numpy(a) for a in mesh_layout(n))
    Lt = suffix.transpose(-1, -2)                                   # Lt[:, c, j] = column j of L_c
    Lp, Lq = Lt[:, col, top], Lt[:, col, top + 1]                   # (B, m, n)
    Pp, Pq = prefix[:, col, top], prefix[:, col, top + 1]
    unit = 1j
    a_phi = unit * (Lp * t00[..., None] + Lq * t10[..., None])
    s1, c1, s2, c2 = r1.sqrt(), (1 - r1).sqrt(), r2.sqrt(), (1 - r2).sqrt()
    e_theta, e_phi = torch.polar(torch.ones_like(theta), theta), torch.polar(torch.ones_like(phi), phi)
    a_theta = unit * e_theta[..., None] * (s2[..., None] * Lp + unit * c2[..., None] * Lq)
    b_theta = (s1 * e_phi)[..., None] * Pp + unit * c1[..., None] * Pq
    J = phases.new_empty((B, 2 * m + n, n, n))
    _real_outer(a_theta, b_theta, J[:, :m])
    _real_outer(a_phi, Pp, J[:, m:2 * m])
    J[:, 2 * m:] = 0.0
    rows = torch.arange(n)
    J[:, 2 * m + rows, rows, :] = -U.imag                           # Re(i U[j, :]) on row j
    return J


def _real_outer(a: Any, b: Any, out: Any) -> None:
    """Re(a b^T) for batches of complex vectors (..., n) into ``out`` (..., n, n): [Re a, -Im a] [Re b; Im b], a
    product of inner size 2 (one pass over ``out``, where the sum of two outer products took three)."""
    import torch

    out.copy_(torch.stack([a.real, -a.imag], -1) @ torch.stack([b.real, b.imag], -2))


def _partial_products(entries: tuple[Any, Any, Any, Any], psi: Any, n: int) -> tuple[Any, Any, Any]:
    """(P_c for c = 0..N-1, L_c for c = 0..N-1, U), each (B, N, n, n) / (B, n, n): the mesh's column products
    from the input side and from the output side (screen included)."""
    import torch

    t00 = entries[0]
    B = t00.shape[0]
    d0, d1, perm = column_diagonals(entries, n)                       # (B, column, row)
    C = t00.new_zeros((B, n, n, n))                                  # C[:, c] = column c's matrix
    cols, rows = torch.arange(n)[:, None], torch.arange(n)[None, :]
    C[:, cols, rows, perm] = d1                                      # a mode without an MZI: perm is itself
    C[:, cols, rows, rows] = d0                                      # and d0 (1) wins over d1 (0)
    eye = torch.eye(n, dtype=t00.dtype).expand(B, n, n)
    prefix = [eye]
    for c in range(n - 1):
        prefix.append(C[:, c] @ prefix[-1])
    screen = torch.diag_embed(torch.polar(torch.ones_like(psi), psi).to(t00.dtype))
    suffix = [screen]
    for c in range(n - 1, 0, -1):
        suffix.append(suffix[-1] @ C[:, c])
    U = suffix[-1] @ C[:, 0]
    return torch.stack(prefix, 1), torch.stack(suffix[::-1], 1), U


#: Meshes whose metric is formed at once: their J, J J^T and inverse (3 phases^2 floats each, 768 KB a 16-mode
#: mesh) stay below the allocator's reuse threshold (larger arrays are fresh pages from the kernel every time: a
#: batch of 256 at once spent a third of the metric in page faults).
METRIC_MESHES_PER_PASS = 16
#: The largest mesh whose backward sweep takes its row pairs' 2 x 2 products as matrix products: torch loops over
#: products of fewer than 400 multiply-adds itself (2 x 2 x n here), mesh by mesh; above, BLAS may round a mesh
#: differently in another batch (the elementwise sweep does not).
PAIR_PRODUCT_MODES = 64
#: The order below which :func:`spd_inverse` inverts through a Cholesky factor (LAPACK) rather than by halves.
SPD_LEAF = 64


def gauss_newton_metric(phases: Any, n: int, ratios: Any, weight: Any, free: Any = None,
                        damping: float = 1e-3) -> Any:
    """(2 (J^T J + damping I))^{-1} per mesh (B, n^2, n^2), J of ``weight`` * Re(U) (weight (B, n, n), a mask):
    the inverse Hessian of the loss ||weight (Re U - target)||^2 in the Gauss-Newton approximation, damped so a
    nearly singular direction takes a bounded step.  ``free`` (B, n^2) bool: a fixed phase gets no step.  Formed
    :data:`METRIC_MESHES_PER_PASS` meshes at a time (a mesh's metric does not depend on the others)."""
    B, P = phases.shape
    # a weight, ratios or free shared by every mesh (leading size 1) is every mesh's, in every pass
    weight, ratios = weight.expand(B, *weight.shape[1:]), ratios.expand(B, *ratios.shape[1:])
    free = None if free is None else free.expand(B, P)
    out = phases.new_empty((B, P, P))
    for k in range(0, B, METRIC_MESHES_PER_PASS):
        part = slice(k, k + METRIC_MESHES_PER_PASS)
        _metric(phases[part], n, ratios[part], weight[part], None if free is None else free[part], damping,
                out[part])
    return out


def _metric(phases: Any, n: int, ratios: Any, weight: Any, free: Any, damping: float, out: Any) -> None:
    """:func:`gauss_newton_metric` of a few meshes, into ``out``."""
    import torch

    J = real_jacobian(phases, n, ratios)
    if not bool(torch.all(weight == 1)):
        J.mul_(weight[:, None])
    J = J.flatten(2)                                                # (B, n^2 phases, n^2 entries)
    if free is not None:
        J.mul_(free[..., None].to(J.dtype))
    P = J.shape[1]
    h = P // 2
    # A = 2 (J J^T + damping I) by halves of its rows: spd_inverse never reads the lower left block, so the upper
    # blocks (three quarters of the product) are all that is formed
    J1, J2 = J[:, :h], J[:, h:]
    damped = torch.eye(P - h, dtype=J.dtype, device=J.device).mul_(2.0 * damping)
    A11 = torch.baddbmm(damped[:h, :h], J1, J1.transpose(1, 2), alpha=2.0)
    A12 = torch.bmm(J1, J2.transpose(1, 2)).mul_(2.0)
    A22 = torch.baddbmm(damped, J2, J2.transpose(1, 2), alpha=2.0)
    spd_inverse_by_halves(A11, A12, A22, out)


def spd_inverse(A: Any) -> Any:
    """Inverses of symmetric positive definite matrices (B, n, n): a Cholesky factor's (LAPACK) up to order
    :data:`SPD_LEAF`, :func:`spd_inverse_by_halves` above it.  A matrix that is not positive definite in its
    precision (the factorisation fails) gets NaN throughout, never an inverse of its partial factor: the NaN
    carries through the halves to the whole inverse, and the fit then starts that block from gamma I (plain
    L-BFGS, :func:`~pnndeploy.platforms.lbfgs.two_loop`)."""
    import torch

    n = A.shape[-1]
    if n <= SPD_LEAF:
        factor, info = torch.linalg.cholesky_ex(A)
        inverse = torch.cholesky_inverse(factor)
        if bool(info.any()):
            inverse[info != 0] = float("nan")
        return inverse
    h = n // 2
    return spd_inverse_by_halves(A[:, :h, :h], A[:, :h, h:], A[:, h:, h:])


def spd_inverse_by_halves(A11: Any, A12: Any, A22: Any, out: Any = None) -> Any:
    """The inverse of the symmetric positive definite A = [[A11, A12], [A12^T, A22]] (batches): with the Schur
    complement S = A22 - A12^T A11^-1 A12 (itself positive definite) and W = A11^-1 A12,
    A^-1 = [[A11^-1 + W S^-1 W^T, -W S^-1], [-S^-1 W^T, S^-1]].

    Block elimination without pivoting, which positive definiteness allows; the same work as a Cholesky factor
    and its inverse, but as batched matrix products: a batch of 256 x 256 metrics in about 0.6 of LAPACK's time
    (and its lower left block need not be formed).  Less accurate than the Cholesky inverse (an explicit A11^-1
    feeds S): in float32 at the fit's damping (1e-2) within about 1e-3 of the exact metric on 16- and 32-mode
    meshes (Cholesky: 4e-5), at 1e-3 about 1e-2 to 1e-1; ample for an L-BFGS preconditioner, not for a solve.
    ``out``: where to write it (a new tensor by default; written quarter by quarter, no copy of the whole)."""
    import torch

    h = A11.shape[-1]
    X = spd_inverse(A11)
    W = torch.bmm(X, A12)
    Si = spd_inverse(torch.baddbmm(A22, A12.transpose(1, 2), W, alpha=-1.0))
    V = torch.bmm(W, Si).neg_()                                     # -W S^-1
    if out is None:
        out = A11.new_empty((A11.shape[0], h + Si.shape[-1], h + Si.shape[-1]))
    out[:, :h, :h] = torch.baddbmm(X, V, W.transpose(1, 2), alpha=-1.0)
    out[:, :h, h:] = V
    out[:, h:, :h] = torch.bmm(Si, W.transpose(1, 2)).neg_()        # V^T, formed rather than transposed (a copy
    out[:, h:, h:] = Si                                             # across rows is slower than the product)
    return out


def loss_and_gradient(phases: Any, n: int, ratios: Any, target: Any, weight: Any) -> tuple[Any, Any]:
    """||weight (Re U - target)||^2 per mesh (B,) and its gradient in the phases (B, n^2), by hand: one sweep
    through the columns keeping the partial products P_c, one back with Z_c = L_c^T G (G the loss's gradient in
    Re U) taking every MZI's 2 x 2 block K of Z_c P_c^T on the way.  Each column works on the pairs of rows its
    MZIs mix (strided views: no gathers), and like :func:`mesh_unitary` a mesh's bits do not depend on the batch:
    row products and sums over whole rows, per-MZI arithmetic in reals."""
    t, prefix, screen, V = _sweep(phases, n, ratios)
    R = weight * (V.real - target)
    loss = (R * R).sum((-2, -1))
    G = 2.0 * weight * R
    return loss, _phase_gradient(phases, n, ratios, t, prefix, screen[:, :, None] * G, -(G * V.imag).sum(-1))


def complex_loss_and_gradient(phases: Any, n: int, ratios: Any,
                              loss_of: Callable[[Any], tuple[Any, Any]]) -> tuple[Any, Any]:
    """A loss of the whole complex U (B,) and its gradient in the phases (B, n^2), by the sweeps of
    :func:`loss_and_gradient`: ``loss_of(U)`` gives the loss and G = dL/dRe U + i dL/dIm U (B, n, n).

    dL = Re sum conj(G) dU, and dU = S dP_N (S the output screen), so the backward sweep starts from
    Z = S conj(G) (for a loss of Re U alone, G is real and this is :func:`loss_and_gradient`'s S G); an output
    phase psi_k turns row k by e^{i psi_k}: dL/dpsi_k = -sum_j Im(conj(G_kj) U_kj).  The loss a mesh read by
    intensity is fitted with (:mod:`~pnndeploy.platforms.mzi_intensity`) depends on Im U too."""
    t, prefix, screen, V = _sweep(phases, n, ratios)
    loss, G = loss_of(V)
    G = G.conj()
    return loss, _phase_gradient(phases, n, ratios, t, prefix, screen[:, :, None] * G, -(G * V).imag.sum(-1))


def _phase_gradient(phases: Any, n: int, ratios: Any, t: tuple[Any, Any, Any, Any], prefix: Any, Z: Any,
                    psi_gradient: Any) -> Any:
    """The gradient in every phase (B, n^2) from the forward sweep (``t``, ``prefix``: :func:`_sweep`), the
    backward sweep's start ``Z`` (S G or S conj(G)) and the output phases' gradient."""
    import torch

    m = mzi_count(n)
    K = _backward(t, prefix, Z, n)
    grad = torch.empty_like(phases)
    grad[:, 2 * m:] = psi_gradient
    _mzi_gradients(t, phases[:, :m], phases[:, m:2 * m], ratios[..., 0], ratios[..., 1], K, n, grad)
    return grad


def _sweep(phases: Any, n: int, ratios: Any) -> tuple[tuple[Any, Any, Any, Any], Any, Any, Any]:
    """The forward sweep of the gradients: (the MZIs' entries, the partial products P_0 .. P_N, the output
    screen e^{i psi}, U = S P_N) of meshes at ``phases`` (B, n^2) with splitting ratios (B, M, 2)."""
    import torch

    m = mzi_count(n)
    t = _mzi_entries(torch, phases[:, :m], phases[:, m:2 * m], ratios[..., 0], ratios[..., 1])
    prefix = _forward(t, n)
    psi = phases[:, 2 * m:]
    screen = torch.complex(torch.cos(psi), torch.sin(psi))
    return t, prefix, screen, screen[:, :, None] * prefix[:, n]


@lru_cache(maxsize=None)
def _columns(n: int) -> tuple[tuple[int, slice], ...]:
    """Each column's first mode and its MZIs' slice of the control order (a column's MZIs are listed together);
    made once per mesh size (every evaluation of the fit sweeps them twice)."""
    col, _ = mesh_layout(n)
    out, first = [], 0
    for c in range(n):
        k = int((col == c).sum())
        out.append((c % 2, slice(first, first + k)))
        first += k
    return tuple(out)


def _forward(t: tuple[Any, Any, Any, Any], n: int) -> Any:
    """P_c = C_{c-1} ... C_0 for c = 0 .. N (B, N + 1, n, n): column c mixes rows (p, p + 1) of its MZIs.

    Written for few Python calls per column (each holds the interpreter lock while it dispatches, which two
    mapping threads share): the entries are split by column once, sums land in place, empty copies are skipped."""
    import torch

    B = t[0].shape[0]
    prefix = t[0].new_empty((B, n + 1, n, n))
    prefix[:, 0] = torch.eye(n, dtype=t[0].dtype)
    slabs = prefix.unbind(1)
    columns = _columns(n)
    sizes = [sl.stop - sl.start for _, sl in columns]
    entries = zip(*(torch.split(v[:, :, None], sizes, dim=1) for v in t))
    for c, ((lo, sl), (t00, t01, t10, t11)) in enumerate(zip(columns, entries)):
        U, out = slabs[c], slabs[c + 1]
        hi = lo + 2 * (sl.stop - sl.start)
        a, b = U[:, lo:hi:2], U[:, lo + 1:hi:2]
        torch.add(t00 * a, t01 * b, out=out[:, lo:hi:2])
        torch.add(t10 * a, t11 * b, out=out[:, lo + 1:hi:2])
        if lo:
            out[:, :lo] = U[:, :lo]
        if hi < n:
            out[:, hi:] = U[:, hi:]
    return prefix


def _backward(t: tuple[Any, Any, Any, Any], prefix: Any, Z: Any, n: int) -> list[Any]:
    """K00, K01, K10, K11 of every MZI (each (B, M)): K = Z_c P_c^T on its rows, with Z_{N-1} = S G (S conj(G)
    for a loss of the complex U, :func:`complex_loss_and_gradient`) and
    Z_{c-1} = C_c^T Z_c (rows p, p + 1 of C_c^T Z: t00 Z_p + t10 Z_{p+1}, t01 Z_p + t11 Z_{p+1}).

    Up to :data:`PAIR_PRODUCT_MODES` modes each column is two products of 2 x 2 (or 2 x n) blocks over its row
    pairs, a handful of torch's ops where elementwise products and sums take 28 (on two threads each op's
    dispatch holds the interpreter lock): torch computes products this small mesh by mesh in its own loop, so a
    mesh's bits do not depend on the batch.  Larger products go to BLAS, whose rounding can depend on the batch."""
    import torch

    if n > PAIR_PRODUCT_MODES:
        return _backward_elementwise(t, prefix, Z, n)
    t00, t01, t10, t11 = t
    B, M = t00.shape
    K = t00.new_empty((B, M, 2, 2))
    Z = Z.clone()
    transposed = torch.stack((torch.stack((t00, t10), -1), torch.stack((t01, t11), -1)), -2)     # T^T
    for c, (lo, sl) in reversed(list(enumerate(_columns(n)))):
        k = sl.stop - sl.start
        pairs = Z[:, lo:lo + 2 * k].view(B, k, 2, n)
        torch.matmul(pairs, prefix[:, c, lo:lo + 2 * k].view(B, k, 2, n).transpose(-1, -2), out=K[:, sl])
        if c:
            pairs.copy_(transposed[:, sl] @ pairs)
    return [K[..., 0, 0], K[..., 0, 1], K[..., 1, 0], K[..., 1, 1]]


def _backward_elementwise(t: tuple[Any, Any, Any, Any], prefix: Any, Z: Any, n: int) -> list[Any]:
    """:func:`_backward` by elementwise products and row sums (any mesh size)."""
    t00, t01, t10, t11 = t
    K = [t00.new_empty(t00.shape) for _ in range(4)]
    Z = Z.clone()
    for c, (lo, sl) in reversed(list(enumerate(_columns(n)))):
        hi = lo + 2 * (sl.stop - sl.start)
        za, zb = Z[:, lo:hi:2], Z[:, lo + 1:hi:2]
        pa, pb = prefix[:, c, lo:hi:2], prefix[:, c, lo + 1:hi:2]
        for k, (z, p) in enumerate(((za, pa), (za, pb), (zb, pa), (zb, pb))):
            K[k][:, sl] = (z * p).sum(-1)
        if c:
            new_a = t00[:, sl, None] * za + t10[:, sl, None] * zb
            zb.copy_(t01[:, sl, None] * za + t11[:, sl, None] * zb)
            za.copy_(new_a)
    return K


def _mzi_gradients(t: tuple[Any, Any, Any, Any], theta: Any, phi: Any, r1: Any, r2: Any, K: list[Any], n: int,
                   grad: Any) -> None:
    """d loss / d theta, d phi of every MZI into ``grad``: Re sum_ab K_ab dT_ab."""
    import torch

    m = mzi_count(n)
    k = [(v.real, v.imag) for v in K]
    t00, t10 = (t[0].real, t[0].imag), (t[2].real, t[2].imag)
    # phi: Re(i (K00 t00 + K10 t10)) = -Im(...)
    grad[:, m:2 * m] = -(_mul(k[0], t00)[1] + _mul(k[2], t10)[1])
    # theta: -Im(e^{i theta} (s1 s2 e^{i phi} K00 + i c1 s2 K01 + i s1 c2 e^{i phi} K10 - c1 c2 K11))
    s1, c1, s2, c2 = r1.sqrt(), (1 - r1).sqrt(), r2.sqrt(), (1 - r2).sqrt()
    e_phi = (torch.cos(phi), torch.sin(phi))
    a = _mul(e_phi, (s1 * s2 * k[0][0] - s1 * c2 * k[2][1], s1 * s2 * k[0][1] + s1 * c2 * k[2][0]))
    total = (a[0] - c1 * s2 * k[1][1] - c1 * c2 * k[3][0], a[1] + c1 * s2 * k[1][0] - c1 * c2 * k[3][1])
    grad[:, :m] = -_mul((torch.cos(theta), torch.sin(theta)), total)[1]


def _mul(a: tuple[Any, Any], b: tuple[Any, Any]) -> tuple[Any, Any]:
    """(re, im) of a complex product in real arithmetic (the same rounding in every vector lane)."""
    return a[0] * b[0] - a[1] * b[1], a[0] * b[1] + a[1] * b[0]
