"""Sharpness: the dominant eigenvalue of the loss Hessian with respect to the on-chip controls.

Computed by power iteration on Hessian-vector products (double backward), on a
fixed batch with a fixed start vector, so the same model gives the same number.
A large value means a small error in a heater setting moves the loss a lot.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn


def top_hessian_eigenvalue(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                           iterations: int = 100, tol: float = 1e-4, seed: int = 0) -> float:
    """Dominant (largest-magnitude) Hessian eigenvalue of ``loss_fn()`` w.r.t. ``params``.

    Power iteration: v <- Hv / ||Hv|| until the Rayleigh quotient v.Hv changes
    by less than ``tol`` relative; returns v.Hv (signed).
    """
    params = list(params)
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=generator, dtype=p.dtype) for p in params]
    v = _normalise(v)
    eigenvalue = 0.0
    for it in range(iterations):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        new = float(sum((a * b).sum() for a, b in zip(v, hv)))
        norm = torch.sqrt(sum((h.double() ** 2).sum() for h in hv))
        if norm == 0:
            return 0.0
        v = [h / norm.to(h.dtype) for h in hv]
        if it > 0 and abs(new - eigenvalue) <= tol * max(abs(new), 1e-12):
            return new
        eigenvalue = new
    return eigenvalue


def hessian_trace(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
                  samples: int = 32, seed: int = 0) -> float:
    """Hutchinson estimate of tr(H): the mean of v.Hv over Rademacher vectors v.

    The top eigenvalue says how bad the worst direction is; the trace says how
    much the loss rises, on average, under *random* independent errors of every
    control (E[dL] ~ 0.5 * sigma^2 * tr H), which is what fabrication and
    calibration errors are.
    """
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(samples):
        v = [torch.randint(0, 2, p.shape, generator=generator).to(p.dtype) * 2 - 1 for p in params]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        total += float(sum((a * b).sum() for a, b in zip(v, hv)))
    return total / samples


def _normalise(vectors: list[torch.Tensor]) -> list[torch.Tensor]:
    norm = torch.sqrt(sum((x ** 2).sum() for x in vectors))
    return [x / norm for x in vectors]


def model_sharpness(model: nn.Module, X: torch.Tensor, y: torch.Tensor,
                    max_samples: int = 1024, iterations: int = 100) -> float:
    """Sharpness of a PNN w.r.t. its controls, on the first ``max_samples`` samples.

    Works for every method: a baseline model is first mapped onto controls
    (``to_controls``), so all methods are measured in the same units (nm).
    The model is cast to float64 so the power iteration is not limited by
    float32 round-off.
    """
    nominal, closure = _control_loss(model, X, y, max_samples)
    return top_hessian_eigenvalue(closure, nominal.onchip_parameters(), iterations=iterations)


def model_hessian_trace(model: nn.Module, X: torch.Tensor, y: torch.Tensor, max_samples: int = 1024,
                        samples: int = 32) -> float:
    """tr(H) w.r.t. the controls (1/control unit^2), measured like :func:`model_sharpness`."""
    nominal, closure = _control_loss(model, X, y, max_samples)
    return hessian_trace(closure, nominal.onchip_parameters(), samples=samples)


def _control_loss(model: nn.Module, X: torch.Tensor, y: torch.Tensor, max_samples: int):
    """The model on controls in float64, and a closure of its loss on a fixed batch."""
    nominal = model.to_controls().double().eval()
    Xb, yb = X[:max_samples].double(), y[:max_samples]
    loss = nn.CrossEntropyLoss()
    return nominal, lambda: loss(nominal(Xb), yb)
