"""The SAT optimiser step: ascend to the worst nearby point, take the gradient there, restore.

SAT minimises max_{||eps|| <= rho} L(theta + eps) over the on-chip *controls*
theta, so its eps-ball lives in the same space (nm of detuning) as the errors a
real chip makes.  One step (PAPER.md):

1. g = grad L(theta) on the batch;
2. eps = rho * g / ||g|| (one global norm), or adaptively
   eps = rho * theta^2 * g / || |theta| * g ||;
3. g_adv = grad L(theta + eps) on the same batch;
4. restore theta by copy (the controls are clamped, so subtracting eps would
   not undo the step exactly), then step the base optimiser with g_adv.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from pnndeploy.training.adversary import Adversary


class SharpnessAwareStep(Adversary):
    """The SAT ascent and restore around one base-optimiser step.

    Usage per batch: take the clean gradient (``autograd.grad``, so ``.grad``
    stays empty), :meth:`ascend` with it, backward the loss at the perturbed
    point, :meth:`restore`, step the base optimiser.  With a zero (or
    non-finite) gradient the ascent is skipped: the step is then a plain step.
    With control noise each pass draws its own noise, like every other
    forward in training: the ascent direction and the adversarial gradient
    are both estimates over the noise.
    """

    def __init__(self, params: Sequence[nn.Parameter], rho: float, adaptive: bool,
                 eps: float = 1e-12, drift: Sequence[float] | None = None,
                 drift_budget: float = 0.0, every: int = 1) -> None:
        super().__init__(params, every)
        self.rho = rho
        self.adaptive = adaptive
        self.eps = eps
        #: Per-parameter drift coefficient (control units per kelvin; 0 for digital parameters).
        self.drift = list(drift) if drift is not None else [0.0] * len(self.params)
        #: Temperature change (K) the structured adversary may apply as a common-mode shift.
        self.drift_budget = drift_budget

    @torch.no_grad()
    def ascend(self, grads: Sequence[torch.Tensor | None] | None = None) -> float:
        """Move the parameters to theta + eps (+ the worse common-mode drift); returns ||eps||.

        ``grads`` is the clean gradient, one per parameter (default: the
        parameters' ``.grad``).  Training passes it from ``autograd.grad``, so
        the clean pass never touches ``.grad`` and cannot leak into the step.
        theta is saved here unless the step's :meth:`begin` saved it already.

        eps is SAT's isotropic ascent (0 when rho is 0 or the gradient vanishes).
        With a drift budget, every control is also shifted by s * k * budget, the
        sign s chosen so the shift raises the loss to first order (+ when the
        slope is 0): a temperature change moves every ring the same way, which
        an isotropic ball of radius rho hardly covers.  A non-finite gradient
        skips the whole ascent.
        """
        if grads is None:
            grads = [p.grad for p in self.params]
        grads = [g if g is not None else torch.zeros_like(p) for p, g in zip(self.params, grads)]
        scaled = torch._foreach_mul(torch._foreach_abs(self.params), grads) if self.adaptive else grads
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(scaled))))
        if not self._saved:
            self._save()
        if not math.isfinite(norm):             # nothing sensible to ascend along
            self.last_perturbation = [torch.zeros_like(p) for p in self.params]
            return 0.0
        if self.rho == 0 or norm <= self.eps:
            perturbation = [torch.zeros_like(p) for p in self.params]
        else:
            base = torch._foreach_mul(torch._foreach_mul(self.params, self.params), grads) if self.adaptive \
                else grads
            perturbation = torch._foreach_mul(base, self.rho / norm)
        if self.drift_budget > 0:
            slope = sum(float(g.sum()) * k for g, k in zip(grads, self.drift) if k)
            sign = 1.0 if slope >= 0 else -1.0
            perturbation = [e + sign * self.drift_budget * k if k else e for e, k in zip(perturbation, self.drift)]
        torch._foreach_add_(self.params, perturbation)
        self.last_perturbation = perturbation
        self._cached = perturbation
        self.steps += 1
        self.refreshes += 1
        if not self.adaptive and self.drift_budget == 0 and self.rho > 0 and norm > self.eps:
            return float(self.rho)          # rho * g / ||g|| has norm rho by construction: skip the work
        return float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(perturbation))))
