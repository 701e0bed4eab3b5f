"""The training loop every method runs: batches, the method's step, FD-SAT's setup state, the optimiser.

What differs between methods (standard, noise-aware, SAT, spec-SAT) is their step
(:meth:`~pnndeploy.training.methods.base.Method.start`); the baseline trains the weights W and maps them through
the inverse transfer function at export, the others train the on-chip controls themselves.  The settings are
:class:`~pnndeploy.training.config.TrainConfig`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from pnndeploy.compute import CPU, Compute
from pnndeploy.data.datasets import Dataset
from pnndeploy.errors import ConfigError, PnnError
from pnndeploy.formats.onnx_import import ImportedNetwork, read_network
from pnndeploy.training.config import TrainConfig
from pnndeploy.training.fd_sat import MisalignmentAdversary
from pnndeploy.training.in_situ import InSituChip
from pnndeploy.training.methods import get_method
from pnndeploy.training.methods.base import Step
from pnndeploy.training.methods.spec_sat import SpecSAT
from pnndeploy.training.model import PNN, FrontEnd, accuracy
from pnndeploy.training.perturbation_set import PerturbationSet


class TrainingDiverged(PnnError):
    """The loss became NaN or infinite: the settings, not the data, are at fault."""


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
    #: What the method's step learnt that the model file records (spec-sat: its perturbation set).
    learnt: dict | None = None
    #: In-situ training: the chip it was trained on and what that cost (what the model file records).
    in_situ: dict | None = None
    #: Where it was trained: {"device": "cpu" | "cuda:N", "threads": intra-op CPU threads}.
    compute: dict | None = None
    #: ``--init-from``: the file and the accuracies as read and as mapped (what the model file records).
    init_from: dict | None = None

    @property
    def perturbation_set(self) -> PerturbationSet | None:
        """spec-sat: the perturbation set it trained against (round 2's name for ``learnt["perturbation_set"]``)."""
        return (self.learnt or {}).get("perturbation_set")


def build_model(config: TrainConfig, n_features: int, n_classes: int,
                image_shape: tuple[int, int, int] | None = None) -> PNN:
    """The PNN for this config: controls for noise-aware and SAT, weights for the baseline.

    With ``--conv`` or ``--onchip``, a digital front end comes first (``image_shape`` is the
    data's (channels, rows, cols), which a conv stack needs).
    """
    platform = config.chip_platform
    dense, onchip_hidden = config.layer_split()
    front = None
    if config.conv or dense:
        if config.conv and image_shape is None:
            raise ConfigError("--conv needs image data (digits, digits28, mnist:DIR, cifar10:DIR); this dataset's "
                              "features are not an image; drop --conv or use --onchip with dense digital layers")
        if config.conv and min(image_shape[1:]) // 2 ** len(config.conv) < 1:
            raise ConfigError(f"--conv {','.join(map(str, config.conv))}: {len(config.conv)} 2x2 max-pools shrink "
                              f"{image_shape[1]}x{image_shape[2]} images to nothing; use fewer stages")
        front = FrontEnd(image_shape, config.conv, dense, n_features, kernel=config.kernel,
                         batch_norm=config.batch_norm)
        n_features = front.out_features
    sizes = [n_features, *onchip_hidden, n_classes]
    # the baseline trains W itself where a layer is a weight matrix, the ideal device's controls elsewhere
    parameterisation = "weights" if get_method(config.method).trains_weights and platform.linear else "controls"
    return PNN(sizes, platform, seed=config.seed, parameterisation=parameterisation, front=front)


def spec_perturbations(config: TrainConfig) -> PerturbationSet:
    """The perturbation set spec-SAT trains against, from the config's process spec and requirements."""
    return SpecSAT().perturbations(config)


def train(dataset: Dataset, config: TrainConfig, on_epoch: Callable[[EpochRecord], None] | None = None,
          chip: InSituChip | None = None, compute: Compute = CPU, init: ImportedNetwork | None = None) -> TrainResult:
    """Train one model on ``dataset`` with ``config``; deterministic for a given seed, compute device and thread
    count (unless in situ).  The model comes back on the CPU, whatever ``compute`` trained it on.

    With ``chip``, every forward pass of the on-chip layers is measured on that chip (in-situ
    training: PAT for standard, SAT + PAT for sat; :mod:`~pnndeploy.training.in_situ`).

    Threads (``compute.threads``, or by the size of the step): the default ring and mesh models are small, so
    they train on one intra-op thread, where extra threads only add synchronisation (and on a busy machine
    their spin-waiting made a 1 s training take tens of seconds); a conv front end on MNIST-sized images is
    split over every core.

    With ``config.init_from`` the model starts from that file (``init``: the file already read), mapped onto the
    nominal chip (:mod:`~pnndeploy.training.init_from`).
    """
    torch.manual_seed(config.seed)         # before the model: a digital front end draws its init from it
    imported = None
    if config.init_from is not None:
        from pnndeploy.training.init_from import imported_model

        model, imported = imported_model(config, dataset, init or read_network(config.init_from))
    else:
        model = build_model(config, dataset.n_features, dataset.n_classes, dataset.image_shape)
    work = model.step_macs(config.batch_size)
    with compute.running(work):
        result = _train(dataset, config, model, on_epoch, chip, compute)
    result.compute = {"device": compute.device, "threads": compute.cpu_threads(work)}
    result.init_from = imported
    return result


def _train(dataset: Dataset, config: TrainConfig, model: PNN, on_epoch: Callable[[EpochRecord], None] | None,
           chip: InSituChip | None, compute: Compute) -> TrainResult:
    device = compute.torch_device()
    X = torch.from_numpy(dataset.scaling.apply(dataset.X_train)).to(device)
    y = torch.from_numpy(dataset.y_train).to(device)
    X_test = torch.from_numpy(dataset.scaling.apply(dataset.X_test)).to(device)
    y_test = torch.from_numpy(dataset.y_test).to(device)
    model.to(device)
    if chip is not None and config.misalignment_box is not None:
        raise ConfigError(f"--in-situ with --method {config.method} on {config.platform}: FD-SAT's misalignment "
                          "probes would each be a measurement of the setup, and the station cannot misalign it on "
                          "demand; train in silico (drop --in-situ) or use --method standard for PAT")
    try:
        if chip is not None:
            chip.attach(model)
            try:
                return _loop(model, X, y, X_test, y_test, config, on_epoch, chip)
            finally:
                chip.detach(model)
        return _loop(model, X, y, X_test, y_test, config, on_epoch, None)
    finally:
        model.set_misalignment(None)        # FD-SAT: the model's inputs never left misaligned, whatever happens
        model.cpu()


def _optimizer(model: PNN, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam at --lr, the digital front end at --front-lr times it (at 0 its weights are left out: they never
    move): a front end imported trained is fine-tuned gently.  At the full rate it is the one group it always was
    (the golden runs, bit for bit)."""
    factor = config.front_lr_factor
    if model.front is None or factor == 1.0:
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    front = {id(p) for p in model.front.parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in front], "lr": config.lr}]
    if factor > 0:
        groups.append({"params": list(model.front.parameters()), "lr": config.lr * factor})
    return torch.optim.Adam(groups, lr=config.lr)


def _loop(model: PNN, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
          config: TrainConfig, on_epoch: Callable[[EpochRecord], None] | None,
          chip: InSituChip | None) -> TrainResult:
    method = get_method(config.method)
    optimizer = _optimizer(model, config)
    n = X.shape[0]
    steps_per_epoch = -(-n // config.batch_size)
    step = method.start(model, config, optimizer, steps_per_epoch * config.epochs)
    loss_fn = nn.CrossEntropyLoss()
    shuffle = torch.Generator().manual_seed(config.seed + 1)
    box = config.misalignment_box
    misalign = MisalignmentAdversary(*box, rho=config.misalignment_rho, seed=config.seed + 2) \
        if box is not None else None
    history: list[EpochRecord] = []
    start = time.perf_counter()
    model.train()
    index = 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        order = torch.randperm(n, generator=shuffle).to(X.device)
        total, correct = 0.0, 0
        for begin in range(0, n, config.batch_size):
            idx = order[begin:begin + config.batch_size]
            xb, yb = X[idx], y[idx]
            optimizer.zero_grad(set_to_none=True)
            if misalign is not None:        # FD-SAT: the setup's worst misalignment near a random one
                model.set_misalignment(torch.from_numpy(
                    misalign.state(lambda phi: _loss_at(model, loss_fn, xb, yb, phi)).astype(np.float32)).to(X.device))
            with model.one_statistics_update():     # SAT's passes on one batch: its statistics count once
                logits, loss = step(model, loss_fn, xb, yb, index)
            index += 1
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise TrainingDiverged(_diverged(config, epoch, loss_value))
            optimizer.step()
            model.project()
            total += loss_value * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
        record = EpochRecord(epoch, total / n, correct / n, time.perf_counter() - t0)
        history.append(record)
        model.set_misalignment(None)          # between epochs the model is the nominal one
        if on_epoch is not None:
            on_epoch(record)
    return _finish(model, X, y, X_test, y_test, config, history, time.perf_counter() - start, step, chip)


def _diverged(config: TrainConfig, epoch: int, loss_value: float) -> str:
    radius = get_method(config.method).radius
    also = f" or --{radius.replace('_', '-')} (now {getattr(config, radius)})" if radius else ""
    return f"training diverged at epoch {epoch} (loss {loss_value}); lower --lr (now {config.lr}){also}"


def _finish(model: PNN, X: torch.Tensor, y: torch.Tensor, X_test: torch.Tensor, y_test: torch.Tensor,
            config: TrainConfig, history: list[EpochRecord], seconds: float, step: Step,
            chip: InSituChip | None) -> TrainResult:
    """The trained model's figures on the nominal chip (in situ as in silico), noise off."""
    if chip is not None:
        chip.detach(model)
    model.eval()
    model.set_control_noise(0.0)
    train_acc, test_acc = accuracy(model, X, y), accuracy(model, X_test, y_test)
    return TrainResult(model.cpu(), config, history, train_acc, test_acc, seconds, step.records(),
                       chip.summary() if chip is not None else None)


def _loss_at(model: PNN, loss_fn: nn.Module, xb: torch.Tensor, yb: torch.Tensor, misalignment: np.ndarray) -> float:
    """The batch loss with the setup misaligned by ``misalignment`` (no gradient: FD-SAT's probe).

    Evaluation mode, so control noise (noise-aware or ``--noise``) draws nothing: the probes of one step
    must differ only in the misalignment, or their differences would measure the noise."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model.set_misalignment(torch.from_numpy(misalignment.astype(np.float32)).to(xb.device))
            return float(loss_fn(model(xb), yb))
    finally:
        model.train(was_training)


def evaluation_tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The scaled training set as tensors (what sharpness is measured on)."""
    return (torch.from_numpy(dataset.scaling.apply(dataset.X_train)),
            torch.from_numpy(np.ascontiguousarray(dataset.y_train)))
