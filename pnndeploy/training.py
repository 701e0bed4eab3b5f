"""Training methods: the paper's baseline, noise-aware training, and sharpness-aware training (SAT).

SAT minimises max_{||eps|| <= rho} L(theta + eps) over the on-chip *controls*
theta, so its eps-ball lives in the same space (nm of detuning) as the errors a
real chip makes.  One step (PAPER.md):

1. g = grad L(theta) on the batch;
2. eps = rho * g / ||g|| (one global norm), or adaptively
   eps = rho * theta^2 * g / || |theta| * g ||;
3. g_adv = grad L(theta + eps) on the same batch;
4. restore theta by copy (the controls are clamped, so subtracting eps would
   not undo the step exactly), then step Adam with g_adv.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from pnndeploy.data import Dataset
from pnndeploy.errors import ConfigError, PnnError
from pnndeploy.model import PNN, accuracy
from pnndeploy.platforms import get_platform

METHODS = ("standard", "noise-aware", "sat")
#: noise-aware's default noise on the controls, nm (the default fleet's calibration error is 0.05 nm).
DEFAULT_NOISE = 0.05


class TrainingDiverged(PnnError):
    """The loss became NaN or infinite: the settings, not the data, are at fault."""
PERTURB_CHOICES = ("onchip", "all")


@dataclass
class TrainConfig:
    """Every setting of one training run (what ``--config FILE.yaml`` may set)."""

    method: str = "sat"
    platform: str = "mrr"
    hidden: list[int] = field(default_factory=lambda: [32])
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.01
    seed: int = 0
    rho: float = 0.1
    adaptive: bool = False
    #: Std (nm) of Gaussian noise on every control at each training forward.  None means the
    #: method's default: 0.05 nm for noise-aware, 0 (off) for SAT; the baseline has no controls.
    noise: float | None = None
    perturb: str = "onchip"
    drift_budget: float = 0.0
    sat_every: int = 1

    def validate(self) -> None:
        """Refuse settings that would train nonsense, with the flag to change."""
        for name in ("lr", "rho", "noise", "drift_budget"):
            if getattr(self, name) is not None and not math.isfinite(getattr(self, name)):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number (got {getattr(self, name)})")
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r} is unknown; use one of {', '.join(METHODS)}")
        if self.perturb not in PERTURB_CHOICES:
            raise ConfigError(f"perturb {self.perturb!r} is unknown; use one of {', '.join(PERTURB_CHOICES)}")
        if self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1 (got {self.epochs})")
        if self.sat_every < 1:
            raise ConfigError(f"--sat-every must be at least 1 (got {self.sat_every})")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1 (got {self.batch_size})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be positive (got {self.lr})")
        if not self.rho >= 0:
            raise ConfigError(f"--rho must be 0 or more (got {self.rho})")
        if not self.drift_budget >= 0:
            raise ConfigError(f"--drift-budget must be 0 or more kelvin (got {self.drift_budget})")
        if self.method != "sat":
            defaults = TrainConfig()
            for name in ("rho", "adaptive", "perturb", "drift_budget", "sat_every"):
                if getattr(self, name) != getattr(defaults, name):
                    flag = "--" + name.replace("_", "-")
                    raise ConfigError(f"{flag} is a setting of SAT's ascent step and --method {self.method} "
                                      f"would ignore it; use it with --method sat, or drop it")
        if self.noise is not None and not self.noise >= 0:
            raise ConfigError(f"--noise must be 0 or more nm (got {self.noise})")
        if self.noise and self.method == "standard":
            raise ConfigError("--noise perturbs the detunings, which --method standard does not train; "
                              "use --method noise-aware or sat")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"--hidden must be positive widths (got {self.hidden})")
        get_platform(self.platform)

    @property
    def control_noise(self) -> float:
        """The noise actually used (nm): the given value or the method's default."""
        if self.noise is not None:
            return self.noise
        return DEFAULT_NOISE if self.method == "noise-aware" else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "noise": self.control_noise}


class SharpnessAwareStep:
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
        self.params = list(params)
        #: Refresh the ascent direction every ``every`` steps; reuse the cached eps in between.
        self.every = every
        self.steps = 0          # steps taken (ascend or reapply calls)
        self.refreshes = 0      # ascend calls
        self._cached: list[torch.Tensor] | None = None
        self.rho = rho
        self.adaptive = adaptive
        self.eps = eps
        #: Per-parameter drift coefficient (control units per kelvin; 0 for digital parameters).
        self.drift = list(drift) if drift is not None else [0.0] * len(self.params)
        #: Temperature change (K) the structured adversary may apply as a common-mode shift.
        self.drift_budget = drift_budget
        self._saved: list[torch.Tensor] | None = None
        self._buffers: list[torch.Tensor] | None = None
        self._views: list[torch.Tensor] = []
        self.last_perturbation: list[torch.Tensor] = []

    @torch.no_grad()
    def ascend(self, grads: Sequence[torch.Tensor | None] | None = None) -> float:
        """Move the parameters to theta + eps (+ the worse common-mode drift); returns ||eps||.

        ``grads`` is the clean gradient, one per parameter (default: the
        parameters' ``.grad``).  Training passes it from ``autograd.grad``, so
        the clean pass never touches ``.grad`` and cannot leak into the step.

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

    def _save(self) -> None:
        """Copy theta into buffers allocated once (restore copies them back bit for bit)."""
        if self._buffers is None:
            self._buffers = [torch.empty_like(p) for p in self.params]
            self._views = [p.detach() for p in self.params]     # share storage with the parameters
        torch._foreach_copy_(self._buffers, self._views)
        self._saved = self._buffers

    def refresh_due(self) -> bool:
        """True when this step must compute a fresh ascent (every ``every`` steps, and the first)."""
        return self._cached is None or self.steps % self.every == 0

    @torch.no_grad()
    def reapply(self) -> None:
        """Move to theta + the eps cached at the last refresh (efficient SAT: no clean pass needed).

        Between refreshes theta moves by a few small Adam steps, so the cached
        direction stays a good ascent direction (LookSAM's observation); it is
        recomputed every ``every`` steps.
        """
        if self._cached is None:
            raise RuntimeError("reapply() called before the first ascend()")
        self._save()
        torch._foreach_add_(self.params, self._cached)
        self.last_perturbation = self._cached
        self.steps += 1

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the parameters saved by :meth:`ascend`, bit for bit."""
        if self._saved is None:
            raise RuntimeError("restore() called before ascend()")
        torch._foreach_copy_(self.params, self._saved)
        self._saved = None


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    seconds: float


@dataclass
class TrainResult:
    model: PNN
    config: TrainConfig
    history: list[EpochRecord]
    train_accuracy: float
    test_accuracy: float
    seconds: float


def build_model(config: TrainConfig, n_features: int, n_classes: int) -> PNN:
    """The PNN for this config: controls for noise-aware and SAT, weights for the baseline."""
    platform = get_platform(config.platform)
    sizes = [n_features, *config.hidden, n_classes]
    parameterisation = "weights" if config.method == "standard" else "controls"
    return PNN(sizes, platform, seed=config.seed, parameterisation=parameterisation)


def _perturbed_params(model: PNN, perturb: str) -> list[nn.Parameter]:
    params = model.onchip_parameters() if perturb == "onchip" else list(model.parameters())
    return [p for p in params if p.requires_grad]


def train(dataset: Dataset, config: TrainConfig,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Train one model on ``dataset`` with ``config``; deterministic for a given seed.

    Runs on one intra-op thread: the layers are small, so extra threads only
    add synchronisation, and on a busy machine their spin-waiting made a
    1 s training take tens of seconds.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(dataset, config, on_epoch)
    finally:
        torch.set_num_threads(threads)


def _train(dataset: Dataset, config: TrainConfig,
           on_epoch: Callable[[EpochRecord], None] | None) -> TrainResult:
    config.validate()
    torch.manual_seed(config.seed)
    X = torch.from_numpy(dataset.scaling.apply(dataset.X_train))
    y = torch.from_numpy(dataset.y_train)
    X_test = torch.from_numpy(dataset.scaling.apply(dataset.X_test))
    y_test = torch.from_numpy(dataset.y_test)

    model = build_model(config, dataset.n_features, dataset.n_classes)
    if config.method != "standard":
        model.set_control_noise(config.control_noise)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    sat = None
    if config.method == "sat":
        perturbed = _perturbed_params(model, config.perturb)
        onchip = {id(p) for p in model.onchip_parameters()}
        drift = [model.platform.nominal_drift if id(p) in onchip else 0.0 for p in perturbed]
        sat = SharpnessAwareStep(perturbed, config.rho, config.adaptive, drift=drift,
                                 drift_budget=config.drift_budget, every=config.sat_every)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(config.seed + 1)

    history: list[EpochRecord] = []
    start = time.perf_counter()
    model.train()
    n = X.shape[0]
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=shuffle)
        total, correct = 0.0, 0
        for begin in range(0, n, config.batch_size):
            idx = order[begin:begin + config.batch_size]
            xb, yb = X[idx], y[idx]
            optimizer.zero_grad(set_to_none=True)
            if sat is not None and not sat.refresh_due():
                # efficient SAT: one pass at theta + the cached eps, no clean pass
                sat.reapply()
                logits = model(xb)
                loss = loss_fn(logits, yb)
                loss.backward()
                sat.restore()
            elif sat is not None:
                # the clean gradient of the perturbed parameters only, straight to the ascent
                logits = model(xb)
                loss = loss_fn(logits, yb)
                sat.ascend(torch.autograd.grad(loss, sat.params, allow_unused=True))
                loss_fn(model(xb), yb).backward()
                sat.restore()
            else:
                logits = model(xb)
                loss = loss_fn(logits, yb)
                loss.backward()
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(
                    f"training diverged at epoch {epoch} (loss {loss_value}); lower --lr "
                    f"(now {config.lr}) or --rho (now {config.rho})")
            optimizer.step()
            model.project()
            total += loss_value * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        record = EpochRecord(epoch, total / n, correct / n, time.perf_counter() - t0)
        history.append(record)
        if on_epoch is not None:
            on_epoch(record)
    seconds = time.perf_counter() - start
    model.eval()
    model.set_control_noise(0.0)
    return TrainResult(model, config, history, accuracy(model, X, y), accuracy(model, X_test, y_test),
                       seconds)


def evaluation_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled training set as tensors (what sharpness is measured on)."""
    return (torch.from_numpy(dataset.scaling.apply(dataset.X_train)),
            torch.from_numpy(np.ascontiguousarray(dataset.y_train)))
