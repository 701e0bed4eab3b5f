"""A training method written the way README's "Adding a method" says: one module, then one registry line.

random-drift: every step trains at a common-mode temperature change drawn uniformly in ±``drift_range`` K (every
control shifted by k dT), then puts the controls back: noise-aware training for the thermal common mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pnndeploy.training.methods.base import Method, Step
from pnndeploy.training.settings import setting


@dataclass(frozen=True)
class RandomDriftSettings:
    drift_range: float = setting(1.0, minimum=0.0, metavar="K", owner="random-drift training",
                                 help="random-drift: each step's common-mode temperature change is drawn in ±K")


class RandomDriftStep(Step):
    def __init__(self, params: list[Any], drift: float, drift_range: float) -> None:
        self.params, self.drift, self.drift_range = params, drift, drift_range

    def __call__(self, model: Any, loss_fn: Any, xb: Any, yb: Any, index: int) -> tuple[Any, Any]:
        import torch

        shift = self.drift * self.drift_range * (2 * float(torch.rand(())) - 1)
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_add_(self.params, shift)
        logits, loss = super().__call__(model, loss_fn, xb, yb, index)
        with torch.no_grad():
            torch._foreach_copy_(self.params, saved)
        return logits, loss


class RandomDrift(Method):
    name = "random-drift"
    summary = "each step at a random common-mode temperature change"
    settings = RandomDriftSettings

    def start(self, model: Any, config: Any, optimizer: Any, total_steps: int) -> Step:
        params = [p for p in model.onchip_parameters() if p.requires_grad]
        return RandomDriftStep(params, model.platform.nominal_drift, config.drift_range)
