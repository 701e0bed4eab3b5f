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
    nominal = model.to_controls().double().eval()
    Xb, yb = X[:max_samples].double(), y[:max_samples]
    params = nominal.onchip_parameters()
    loss = nn.CrossEntropyLoss()
    return top_hessian_eigenvalue(lambda: loss(nominal(Xb), yb), params, iterations=iterations)
