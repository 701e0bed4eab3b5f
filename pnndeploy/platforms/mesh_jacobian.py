"""The Jacobian of a mesh's real part in its phases, in closed form: a Gauss-Newton metric for the mapping fit.

Fitting a block's phases through a chip's mesh is a nearly square, ill-conditioned least-squares problem: a
first-order method with a scalar initial Hessian (plain L-BFGS) needs many iterations.  Its Gauss-Newton metric
J^T J, taken once at the fit's start, makes the first steps Gauss-Newton steps and leaves L-BFGS to correct it.

With U = S C_{N-1} ... C_0 (screen S, column c's matrix C_c, :mod:`pnndeploy.platforms.mesh`) and the partial
products P_c = C_{c-1} ... C_0 and L_c = S C_{N-1} ... C_{c+1}, an MZI of column c on modes (p, p+1) enters U
through one 2 x 2 block of C_c, so each of its phases moves U by an outer product (no autograd needed):

* dU/dphi   = i (L_c[:, p:p+2] T[:, 0]) (x) P_c[p, :]
* dU/dtheta = i e^{i theta} (L_c[:, p:p+2] [s2, i c2]) (x) ([s1 e^{i phi}, i c1] P_c[p:p+2, :])
* dU/dpsi_j = i U[j, :] on row j.
"""

from __future__ import annotations

from typing import Any

from pnndeploy.platforms.mesh import _column_gathers, _mzi_entries, mesh_layout, mzi_count


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

    t00, t01, t10, t11 = entries
    B = t00.shape[0]
    g0, g1, perm = (torch.from_numpy(a) for a in _column_gathers(n))
    one = torch.ones((B, 1), dtype=t00.dtype)
    d0 = torch.cat([t00, t11, one], dim=-1)[:, g0]                   # (B, column, row)
    d1 = torch.cat([t01, t10, 0 * one], dim=-1)[:, g1]
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


def gauss_newton_metric(phases: Any, n: int, ratios: Any, weight: Any, free: Any = None,
                        damping: float = 1e-3) -> Any:
    """(2 (J^T J + damping I))^{-1} per mesh (B, n^2, n^2), J of ``weight`` * Re(U) (weight (B, n, n), a mask):
    the inverse Hessian of the loss ||weight (Re U - target)||^2 in the Gauss-Newton approximation, damped so a
    nearly singular direction takes a bounded step.  ``free`` (B, n^2) bool: a fixed phase gets no step."""
    import torch

    J = real_jacobian(phases, n, ratios)
    if not bool(torch.all(weight == 1)):
        J.mul_(weight[:, None])
    J = J.flatten(2)                                                # (B, n^2 phases, n^2 entries)
    if free is not None:
        J.mul_(free[..., None].to(J.dtype))
    P = J.shape[1]
    damped = torch.eye(P, dtype=J.dtype, device=J.device).mul_(2.0 * damping)
    A = torch.baddbmm(damped, J, J.transpose(1, 2), alpha=2.0)      # 2 (J J^T + damping I), one pass
    factor, _ = torch.linalg.cholesky_ex(A)
    return torch.cholesky_inverse(factor)
