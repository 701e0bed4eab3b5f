"""Many small, independent least-squares fits at once: a batched L-BFGS with one line search per problem.

Mapping a fleet fits the phases of every block of every chip through that chip's calibrated model.  Each block
is its own problem (a few hundred phases); ``torch.optim.LBFGS`` treats one parameter tensor as one problem, so
fitting many blocks with it would couple them through one line search (a chip's phases would depend on the
chips mapped with it) and a single chip would pay the per-call overhead of torch for a tiny problem.  Here every
problem keeps its own history, step and stopping test, and only the problems still running are evaluated, so a
problem's result is the same (up to float rounding) whatever other problems share the batch.
"""

from __future__ import annotations

from typing import Any, Callable

#: Sufficient-decrease constant of the Armijo test.
ARMIJO = 1e-4
#: Step halvings (by interpolation) a line search may take before the problem is stopped where it is.
LINE_SEARCH_STEPS = 12


def two_loop(g: Any, S: Any, Y: Any, rho: Any, gamma: Any, metric: Any = None) -> Any:
    """-H g for each problem: the L-BFGS two-loop recursion over (problems, history, params) pairs, newest first.

    A pair with rho = 0 (curvature not positive) contributes nothing.  The initial inverse Hessian is gamma I, or
    ``metric`` (problems, params, params) where given, except for a problem whose metric gives a non-finite step
    (one that could not be formed): that problem starts from gamma I, as without a metric.
    """
    import torch

    q = g.clone()
    alphas = []
    for k in range(S.shape[1]):
        a = rho[:, k] * (S[:, k] * q).sum(-1)
        q -= a[:, None] * Y[:, k]
        alphas.append(a)
    if metric is None:
        r = gamma[:, None] * q
    else:       # q^T H (H is symmetric): a row times the matrix streams H row by row, 3 to 4 times faster than
        # H q (a column product reads it across), and one problem rounds as it does in any batch
        r = (q[:, None, :] @ metric)[:, 0]
        missing = ~torch.isfinite(r).all(-1)            # a metric that could not be formed (NaN: spd_inverse)
        if bool(missing.any()):
            r = torch.where(missing[:, None], gamma[:, None] * q, r)
    for k in reversed(range(S.shape[1])):
        b = rho[:, k] * (Y[:, k] * r).sum(-1)
        r += (alphas[k] - b)[:, None] * S[:, k]
    return -r


def batched_lbfgs(fun: Callable[[Any, Any], tuple[Any, Any]], x0: Any, free: Any = None, iterations: Any = 120,
                  history: int = 10, grad_tol: float = 1e-7, change_tol: float = 1e-12, metric: Any = None) -> Any:
    """Minimise each row of ``x0`` (problems, params) independently; returns the minimisers (a new tensor).

    ``fun(x, rows)`` gives the losses (k,) and gradients (k, params) of problems ``rows`` (a long tensor) at
    ``x`` (k, params).  ``free`` (problems, params) bool: parameters that may move (the others stay at their
    ``x0`` value).  A problem stops after ``iterations`` steps (an int, or a long tensor (problems,): each
    problem's own), when its largest gradient entry is below
    ``grad_tol`` or when a step changes its loss or parameters by less than ``change_tol`` (which float32 cannot
    resolve below about 1e-7 of the values: there the line search's own limit ends a converged problem).
    ``metric`` (problems, params, params): each problem's initial inverse Hessian (say a Gauss-Newton one, so
    the first steps are Gauss-Newton steps) in place of the scaled identity L-BFGS otherwise starts from.
    """
    import torch

    x = x0.clone()
    tiny = torch.finfo(x.dtype).tiny          # the guard of every division (1e-300 would round to 0 in float32)
    B, P = x.shape
    keep = None if free is None else free.to(x.dtype)
    rows = torch.arange(B, device=x.device)
    f, g = fun(x, rows)
    g = g if keep is None else g * keep
    S = x.new_zeros((B, history, P))
    Y = x.new_zeros((B, history, P))
    rho = x.new_zeros((B, history))
    gamma = torch.clamp(1.0 / g.abs().sum(-1).clamp_min(tiny), max=1.0)     # first step: at most 1 in |.|_1
    active = g.abs().amax(-1) > grad_tol
    limit = torch.as_tensor(iterations, device=x.device).expand(B)
    for step_number in range(int(limit.max()) if B else 0):
        active &= limit > step_number
        A = rows[active]
        if A.numel() == 0:
            break
        # while every problem runs (most of a fit), a view: indexing would copy the history and metric each step
        a = slice(None) if A.numel() == B else A
        gA = g[a]
        d = two_loop(gA, S[a], Y[a], rho[a], gamma[a], None if metric is None else metric[a])
        gd = (gA * d).sum(-1)
        uphill = ~(gd < 0)                      # NaN too: a step that is not a number is not downhill
        if bool(uphill.any()):                  # a stale history: fall back to steepest descent for those
            d[uphill] = -gA[uphill] * gamma[a][uphill, None]
            gd = (gA * d).sum(-1)
        t, f_new, g_new = _line_search(fun, x[a], A, f[a], gd, d, keep)
        step = t[:, None] * d
        moved = f_new < f[a]
        s, y = step, g_new - gA
        sy = (s * y).sum(-1)
        good = moved & (sy > 1e-10)
        S[a] = torch.where(good[:, None, None], torch.cat([s[:, None], S[a][:, :-1]], 1), S[a])
        Y[a] = torch.where(good[:, None, None], torch.cat([y[:, None], Y[a][:, :-1]], 1), Y[a])
        rho[a] = torch.where(good[:, None], torch.cat([(1.0 / sy.clamp_min(tiny))[:, None], rho[a][:, :-1]], 1),
                             rho[a])
        gamma[a] = torch.where(good, sy / (y * y).sum(-1).clamp_min(tiny), gamma[a])
        x[a] = torch.where(moved[:, None], x[a] + step, x[a])
        change = (f[a] - f_new).abs()
        f[a] = torch.where(moved, f_new, f[a])
        g[a] = torch.where(moved[:, None], g_new, gA)
        done = ~moved | (change < change_tol) | (step.abs().amax(-1) < change_tol) | (g[a].abs().amax(-1) <= grad_tol)
        active[a] = ~done
    return x


def _line_search(fun: Callable[[Any, Any], tuple[Any, Any]], x: Any, rows: Any, f: Any, gd: Any, d: Any,
                 keep: Any) -> tuple[Any, Any, Any]:
    """Per problem, a step t along ``d`` meeting the Armijo condition (backtracking by quadratic interpolation
    from t = 1); returns (t, loss, gradient) there, or the last trial for a problem that never met it."""
    import torch

    t = torch.ones_like(f)
    f_new = torch.empty_like(f)
    g_new = torch.empty_like(x)
    pending = torch.arange(len(f), device=x.device)
    for _ in range(LINE_SEARCH_STEPS):
        ft, gt = fun(x[pending] + t[pending, None] * d[pending], rows[pending])
        f_new[pending] = ft
        g_new[pending] = gt if keep is None else gt * keep[rows[pending]]
        ok = ft <= f[pending] + ARMIJO * t[pending] * gd[pending]
        pending = pending[~ok]
        if pending.numel() == 0:
            break
        tp, fp, gdp = t[pending], f_new[pending], gd[pending]
        # the minimum of the parabola through f(0), f'(0) and f(t), kept within [0.1 t, 0.5 t]
        trial = -gdp * tp * tp / (2.0 * (fp - f[pending] - gdp * tp)).clamp_min(torch.finfo(tp.dtype).tiny)
        t[pending] = torch.minimum(torch.maximum(trial, 0.1 * tp), 0.5 * tp)
    return t, f_new, g_new
