"""What SAT and spec-SAT share: an adversary that moves the perturbed parameters for one step and puts them back,
and the step that ascends with it.

An :class:`Adversary` saves theta into buffers allocated once, moves the parameters (its :meth:`~Adversary.begin`,
:meth:`~Adversary.locate` and :meth:`~Adversary.ascend`), and restores theta by copy, bit for bit (the controls are
clamped, so subtracting a perturbation would not undo it exactly).  With ``every`` > 1 the ascent is refreshed every
``every`` steps and re-applied from its cache in between (efficient SAT, LookSAM's observation).

:class:`AdversarialStep` is one training step around it, with the ascent along the clean gradient (two passes) or
along Adam's first moment (``momentum``, no extra pass: Momentum-SAM, Becker et al. 2023).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from pnndeploy.training.methods.base import Step


class Adversary:
    """The perturbation of one step, applied in place to ``params`` and undone exactly."""

    def __init__(self, params: Sequence[nn.Parameter], every: int = 1) -> None:
        self.params = list(params)
        #: Refresh the ascent every ``every`` steps; re-apply the cached one in between.
        self.every = every
        self.steps = 0          # steps taken (ascend or reapply calls)
        self.refreshes = 0      # ascend calls
        self._cached: list[torch.Tensor] | None = None
        self._buffers: list[torch.Tensor] | None = None
        self._views: list[torch.Tensor] = []
        self._saved = False
        self.last_perturbation: list[torch.Tensor] = []

    def _save(self) -> None:
        """Copy theta into buffers allocated once (restore copies them back bit for bit)."""
        if self._buffers is None:
            self._buffers = [torch.empty_like(p) for p in self.params]
            self._views = [p.detach() for p in self.params]     # share storage with the parameters
        torch._foreach_copy_(self._buffers, self._views)
        self._saved = True

    @torch.no_grad()
    def begin(self) -> None:
        """Save theta: the point every perturbation of this step starts from."""
        self._save()

    def locate(self, loss_at: Callable[[], float]) -> None:
        """Before the ascent: the structured part of the perturbation, picked by the batch loss (none here)."""

    def ascend(self, grads: Sequence[torch.Tensor | None]) -> float:
        """Move along the ascent of ``grads``; cache it for :meth:`reapply`; returns its norm."""
        raise NotImplementedError

    def refresh_due(self) -> bool:
        """True when this step computes a fresh ascent (every ``every`` steps, and the first)."""
        return self._cached is None or self.steps % self.every == 0

    @torch.no_grad()
    def reapply(self) -> None:
        """Move to :meth:`begin`'s point plus the perturbation cached at the last refresh (no clean pass)."""
        if self._cached is None:
            raise RuntimeError("reapply() called before the first ascend()")
        self.begin()
        torch._foreach_add_(self.params, self._cached)
        self.last_perturbation = self._cached
        self.steps += 1

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the parameters saved at the step's start, bit for bit."""
        if not self._saved:
            raise RuntimeError("restore() called before ascend() or begin()")
        torch._foreach_copy_(self.params, self._buffers)
        self._saved = False


class AdversarialStep(Step):
    """One SAM-style step around ``adversary``: ascend, take the gradient at the perturbed point, restore."""

    def __init__(self, adversary: Adversary, ascent: str, optimizer: torch.optim.Optimizer) -> None:
        self.adversary = adversary
        self.ascent = ascent
        self.optimizer = optimizer

    def prepare(self, index: int) -> None:
        """Called first at step ``index`` (0-based): a schedule's hook (spec-SAT's warm-up)."""

    def __call__(self, model: Any, loss_fn: Any, xb: torch.Tensor, yb: torch.Tensor,
                 index: int) -> tuple[torch.Tensor, torch.Tensor]:
        adversary = self.adversary
        self.prepare(index)
        probe, forward = passes(model, xb, adversary.params)
        if self.ascent == "momentum":
            adversary.begin()
            adversary.locate(lambda: loss_fn(probe(), yb).item())
            adversary.ascend(momentum(self.optimizer, adversary.params))
            return backward_then_restore(forward, loss_fn, yb, adversary)
        if not adversary.refresh_due():
            adversary.reapply()
            return backward_then_restore(forward, loss_fn, yb, adversary)
        adversary.begin()
        adversary.locate(lambda: loss_fn(probe(), yb).item())
        # the clean gradient of the perturbed parameters only, straight to the ascent
        logits = probe()
        loss = loss_fn(logits, yb)
        adversary.ascend(torch.autograd.grad(loss, adversary.params, allow_unused=True))
        loss_fn(forward(), yb).backward()
        adversary.restore()
        return logits, loss


def passes(model: Any, xb: torch.Tensor, perturbed: Sequence[nn.Parameter]) -> tuple[
        Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """(probe, forward): the step's passes over batch ``xb``.  ``probe`` needs no gradient past the perturbed
    parameters (the adversary's loss probes and clean gradient), ``forward`` is the pass the optimiser's
    gradient comes from.

    The adversary moves only the on-chip controls, so the digital front end gives the same features at every
    pass of the step: they are computed once, and every pass runs the on-chip layers alone (at the paper's LeNet
    split the front end is most of a forward, and spec-SAT as programmed takes five).  The values are those of
    separate forwards, bit for bit (the front end draws no random numbers and its batch norms normalise every
    pass of a step by the same batch statistics).  Where the adversary perturbs the front end too (``sat
    --perturb all``), or the model has no front end, every pass is a whole forward."""
    front = getattr(model, "front", None)
    if front is None or {id(p) for p in front.parameters()} & {id(p) for p in perturbed}:
        return (lambda: model(xb)), (lambda: model(xb))
    features = model.features(xb)
    detached = features.detach()
    return (lambda: model.head(detached)), (lambda: model.head(features))


def backward_then_restore(forward: Callable[[], torch.Tensor], loss_fn: Any, yb: torch.Tensor,
                          adversary: Adversary) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward and backward at the point the adversary moved to, then its parameters put back."""
    logits = forward()
    loss = loss_fn(logits, yb)
    loss.backward()
    adversary.restore()
    return logits, loss


def momentum(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> list[torch.Tensor | None]:
    """Adam's first moment of each parameter (None before its first step): the momentum ascent's direction.

    It averages the gradients of the last ~10 steps (beta1 = 0.9), taken at the perturbed points as the
    steps were, so it points where the loss has been rising; using it costs no extra pass.
    """
    return [optimizer.state[p].get("exp_avg") if p in optimizer.state else None for p in params]
