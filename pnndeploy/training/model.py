"""The physical neural network: on-chip layers set by physical controls, digital gains and biases.

Each on-chip layer holds the controls of its devices (ring detunings in nm,
mesh phases in rad) and computes what the nominal device does to its inputs,
``platform.forward(controls, x)`` (for a linear platform ``x @ W(controls)^T``,
so ``W`` lies in the device's range by construction).  Around the chip,
electronics apply a per-output gain and bias and a ReLU.

The paper's baseline (``standard``) on a linear platform trains ``W`` itself,
clamped to [-1, 1]; :meth:`PNN.to_controls` maps such a model onto controls
through the platform (``weights_to_controls``), which is what deploying it to a
chip does.  On a platform whose layer is not a weight matrix the baseline
trains the controls of the ideal device, without noise or an adversary.
"""

from __future__ import annotations

import contextlib
import copy
import math
from typing import Iterator

import numpy as np
import torch
from torch import nn

from pnndeploy.formats.digital import KERNEL, POOL, DigitalFrontEnd, DigitalLayer, same_padding
from pnndeploy.formats.onnx_io import ModelLayer
from pnndeploy.platforms import Platform


class OnChipLayer(nn.Module):
    """y = gain * platform.forward(controls, x) + bias, with the controls the trainable physical parameters."""

    def __init__(self, in_features: int, out_features: int, platform: Platform,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.platform = platform
        self.shape = (out_features, in_features)
        self.controls = nn.Parameter(platform.init_controls(self.shape, generator))
        self.gain = nn.Parameter(torch.full((out_features,), _init_gain(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features))
        #: Std of Gaussian noise (control units) added to the controls at every forward (noise-aware training).
        self.control_noise = 0.0
        #: In-situ training: ``measure(layer, x, z)`` returns the chip's value of ``z = x W^T`` (None: digital).
        self.measure = None
        #: A setup's misalignment the layer sees (a tensor, :meth:`PNN.set_misalignment`; None: none).
        self.misalignment = None

    def current_controls(self) -> torch.Tensor:
        """The controls of this forward pass: with control noise drawn afresh in training (noise-aware)."""
        if self.control_noise > 0 and self.training:
            return self.controls + self.control_noise * torch.randn_like(self.controls)
        return self.controls

    def weight(self) -> torch.Tensor:
        """Weights realised by the nominal device at the current controls (linear platforms)."""
        return self.platform.nominal_weights(self.current_controls(), self.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.platform.forward(self.current_controls(), x, self.shape, self.misalignment)
        if self.measure is not None:
            z = self.measure(self, x, z)
        return z * self.gain + self.bias

    def project(self) -> None:
        """Keep the controls inside what the hardware can set."""
        self.platform.project(self.controls)


class WeightLinear(nn.Module):
    """The baseline's on-chip layer: trains W in [-1, 1] directly, blind to the physics."""

    def __init__(self, in_features: int, out_features: int, platform: Platform,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.platform = platform
        self.shape = shape = (out_features, in_features)
        init = platform.nominal_weights(platform.init_controls(shape, generator), shape)
        self.W = nn.Parameter(init.clone())
        self.gain = nn.Parameter(torch.full((out_features,), _init_gain(in_features)))
        self.bias = nn.Parameter(torch.zeros(out_features))
        #: In-situ training, as :attr:`OnChipLayer.measure`.
        self.measure = None

    def weight(self) -> torch.Tensor:
        return self.W

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x @ self.W.T
        if self.measure is not None:
            z = self.measure(self, x, z)
        return z * self.gain + self.bias

    def project(self) -> None:
        with torch.no_grad():
            self.W.clamp_(-1.0, 1.0)


def _init_gain(in_features: int) -> float:
    """Gain that makes gain * U(-0.9, 0.9) a Kaiming-uniform init (fan-in, ReLU)."""
    return math.sqrt(6.0 / in_features) / 0.9


class FrontEnd(nn.Module):
    """The digital layers before the chip: KxK conv + ReLU + 2x2 max-pool stages, then dense + ReLU layers.

    With ``batch_norm`` every layer is followed by a batch norm before its ReLU (BatchNorm2d after a conv,
    BatchNorm1d after a dense layer): the paper's LeNet-5 trains with one.  :meth:`export` folds each into the
    layer before it (evaluation mode: running statistics), so a model file holds plain layers.
    """

    def __init__(self, image_shape: tuple[int, int, int] | None, conv: list[int], dense: list[int],
                 n_inputs: int, kernel: int = KERNEL, batch_norm: bool = False) -> None:
        super().__init__()
        self.image_shape = image_shape
        convs, channels = [], image_shape[0] if image_shape else 0
        for width in conv:
            convs.append(nn.Conv2d(channels, width, kernel, padding=same_padding(kernel)))
            channels = width
        self.convs = nn.ModuleList(convs)
        size = n_inputs
        if conv:
            assert image_shape is not None
            size = channels * (image_shape[1] // POOL ** len(conv)) * (image_shape[2] // POOL ** len(conv))
        denses = []
        for width in dense:
            denses.append(nn.Linear(size, width))
            size = width
        self.denses = nn.ModuleList(denses)
        self.out_features = size
        self.batch_norm = batch_norm
        # no init draws a random number here: a front end without batch norm is initialised as before it existed
        self.conv_norms = nn.ModuleList(nn.BatchNorm2d(w) for w in conv) if batch_norm else None
        self.dense_norms = nn.ModuleList(nn.BatchNorm1d(w) for w in dense) if batch_norm else None
        #: Inside :meth:`one_statistics_update`: training forwards left that may update the running statistics.
        self._updates_left: int | None = None
        #: An imported model's input normalisation, x * scale + shift per feature (not trained; None: none).
        self.register_buffer("input_scale", None)
        self.register_buffer("input_shift", None)

    def set_input_affine(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Normalise the inputs as an imported model's author did, before the first layer (``train --init-from``)."""
        self.input_scale, self.input_shift = scale.float().clone(), shift.float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frozen = self._updates_left == 0
        if self.input_scale is not None:
            x = x * self.input_scale + self.input_shift
        if self.convs:
            x = x.reshape(x.shape[0], *self.image_shape)
            for k, conv in enumerate(self.convs):
                x = torch.max_pool2d(torch.relu(self._norm(self.conv_norms, k, conv(x), frozen)), POOL)
            x = x.flatten(1)
        for k, dense in enumerate(self.denses):
            x = torch.relu(self._norm(self.dense_norms, k, dense(x), frozen))
        if self.training and self._updates_left:
            self._updates_left -= 1
        return x

    def _norm(self, norms: nn.ModuleList | None, k: int, x: torch.Tensor, frozen: bool) -> torch.Tensor:
        """Batch norm ``k`` of ``norms`` (none: ``x`` as it is).  In training it normalises by the batch's
        statistics and updates the running ones, except in a frozen pass (:meth:`one_statistics_update`); a batch
        of one value per channel, which has no batch statistics, is normalised by the running ones."""
        if norms is None:
            return x
        bn = norms[k]
        if not self.training:
            return bn(x)
        if x.numel() == x.shape[1]:
            return nn.functional.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0,
                                            bn.eps)
        if frozen:
            return nn.functional.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        return bn(x)

    @contextlib.contextmanager
    def one_statistics_update(self) -> Iterator[None]:
        """Within: only the first training forward updates the batch norms' running statistics.

        SAT and spec-SAT run the same batch through the model two or three times in one step (the structured
        adversary's probes, the clean pass, the perturbed pass); the front end is never perturbed, so every pass
        sees the same batch statistics, and letting each update the running averages would weight that batch
        two or three times.  The later passes still normalise by the batch's statistics and train gamma and beta.
        """
        self._updates_left = 1
        try:
            yield
        finally:
            self._updates_left = None

    def macs(self) -> int:
        """Multiply-accumulates of one sample's forward pass (what decides whether threads pay)."""
        total, rows, cols = 0, *(self.image_shape[1:] if self.image_shape else (0, 0))
        for conv in self.convs:
            total += conv.weight.numel() * rows * cols
            rows, cols = rows // POOL, cols // POOL
        return total + sum(dense.weight.numel() for dense in self.denses)

    def export(self) -> DigitalFrontEnd:
        """The front end as a model file holds it: each batch norm folded into the layer before it."""
        layers = [DigitalLayer(f"digital{k}", "conv", *_folded(c, self.conv_norms[k] if self.conv_norms else None))
                  for k, c in enumerate(self.convs)]
        layers += [DigitalLayer(f"digital{len(self.convs) + k}", "dense",
                                *_folded(d, self.dense_norms[k] if self.dense_norms else None))
                   for k, d in enumerate(self.denses)]
        affine = None if self.input_scale is None else (self.input_scale.detach().cpu().numpy().astype(np.float32),
                                                        self.input_shift.detach().cpu().numpy().astype(np.float32))
        return DigitalFrontEnd(layers, tuple(self.image_shape) if self.convs else None, affine)


def _folded(layer: nn.Module, norm: nn.Module | None) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) as float32 of ``layer`` followed by batch norm ``norm`` in evaluation mode (None: none).

    BN(z) = (z - mean) * s + beta with s = gamma / sqrt(var + eps) per output channel is affine in z, so
    w' = w * s and b' = (b - mean) * s + beta give the same outputs (computed in float64, exact up to the
    float32 rounding of the result).
    """
    w, b = layer.weight.detach().cpu().numpy(), layer.bias.detach().cpu().numpy()
    if norm is None:
        return w.astype(np.float32), b.astype(np.float32)
    mean, var = norm.running_mean.detach().cpu().double().numpy(), norm.running_var.detach().cpu().double().numpy()
    gamma, beta = norm.weight.detach().cpu().double().numpy(), norm.bias.detach().cpu().double().numpy()
    s = gamma / np.sqrt(var + norm.eps)
    w = w.astype(np.float64) * s.reshape(-1, *([1] * (w.ndim - 1)))
    return w.astype(np.float32), ((b.astype(np.float64) - mean) * s + beta).astype(np.float32)


class PNN(nn.Module):
    """An MLP whose layers are on-chip optical layers (weight banks, meshes, masks); ReLU in electronics between.

    An optional digital ``front`` (:class:`FrontEnd`) runs before the first on-chip layer: the
    paper's setting, with only the last layers on the chip.  ``sizes`` are the on-chip layers' sizes.
    """

    def __init__(self, sizes: list[int], platform: Platform, seed: int,
                 parameterisation: str = "controls", front: FrontEnd | None = None) -> None:
        super().__init__()
        self.front = front
        if parameterisation not in ("controls", "weights"):
            raise ValueError(f"unknown parameterisation {parameterisation!r}")
        self.sizes = list(sizes)
        self.platform = platform
        self.parameterisation = parameterisation
        generator = torch.Generator().manual_seed(seed)
        if parameterisation == "weights" and not platform.linear:
            raise ValueError(f"{platform.name} layers are not a weight matrix: train their controls")
        layer_cls = OnChipLayer if parameterisation == "controls" else WeightLinear
        self.layers = nn.ModuleList(
            layer_cls(i, o, platform, generator) for i, o in zip(sizes[:-1], sizes[1:])
        )
        #: Per layer, the weights :meth:`to_controls` could not reach (baseline only; copies keep them).
        self.clipped: list[int] = [0] * len(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the on-chip layers take: the digital front end's output (``x`` itself without one).  A step that
        perturbs only the on-chip layers computes it once for all its passes (:mod:`~pnndeploy.training.adversary`)."""
        return self.front(x) if self.front is not None else x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """The on-chip layers (ReLU in electronics between them) on :meth:`features`' output."""
        for k, layer in enumerate(self.layers):
            x = layer(x)
            if k < len(self.layers) - 1:
                x = torch.relu(x)
        return x

    def project(self) -> None:
        for layer in self.layers:
            layer.project()

    def one_statistics_update(self) -> contextlib.AbstractContextManager:
        """A training step's context: the front end's batch norms update their running statistics once, whatever
        the passes the method takes (:meth:`FrontEnd.one_statistics_update`)."""
        return self.front.one_statistics_update() if self.front is not None else contextlib.nullcontext()

    def step_macs(self, batch: int) -> int:
        """Multiply-accumulates of one forward pass over a batch: the size of a training step."""
        onchip = sum(i * o for i, o in zip(self.sizes[:-1], self.sizes[1:]))
        return batch * (onchip + (self.front.macs() if self.front is not None else 0))

    def onchip_parameters(self) -> list[nn.Parameter]:
        """The trainable on-chip parameters: controls, or W for the baseline."""
        return [layer.controls if isinstance(layer, OnChipLayer) else layer.W for layer in self.layers]

    def set_misalignment(self, misalignment: torch.Tensor | None) -> None:
        """Let every on-chip layer's inputs pass a setup misaligned by (rotation_deg, shift_x_px, shift_y_px,
        scale), or none (None); only platforms that image their inputs (free-space) have one."""
        for layer in self.layers:
            layer.misalignment = misalignment

    def set_control_noise(self, std: float) -> None:
        for layer in self.layers:
            if isinstance(layer, OnChipLayer):
                layer.control_noise = std

    def to_controls(self) -> "PNN":
        """This model on the nominal chip, parameterised by controls (on the CPU).

        For a control-trained model this is a copy.  For the baseline, each W is
        mapped onto controls by the platform (``weights_to_controls``); weights
        beyond the device's reach are clipped and counted in :attr:`clipped` (a
        copy keeps the counts of the model it copies), and a row scale the
        device needs is folded into the digital gain, so the outputs stay.
        """
        out = PNN(self.sizes, self.platform, seed=0, parameterisation="controls",
                  front=copy.deepcopy(self.front).cpu() if self.front is not None else None)
        out.clipped = list(self.clipped)
        with torch.no_grad():
            for k, (src, dst) in enumerate(zip(self.layers, out.layers)):
                dst.gain.copy_(src.gain)
                dst.bias.copy_(src.bias)
                if isinstance(src, OnChipLayer):
                    dst.controls.copy_(src.controls)
                else:
                    x, clipped, row_scale = self.platform.weights_to_controls(src.W.detach().cpu().double().numpy())
                    dst.controls.copy_(torch.from_numpy(x).float())
                    if np.any(row_scale != 1.0):
                        dst.gain.mul_(torch.from_numpy(row_scale).float())
                    out.clipped[k] = clipped
        return out

    def export_layers(self) -> list[ModelLayer]:
        """The layers as an ONNX file holds them: the model on the nominal chip (clipped counts: :attr:`clipped`
        of :meth:`to_controls`)."""
        nominal = self.to_controls()
        with torch.no_grad():
            return [ModelLayer(name=f"layer{k}",
                               weight=layer.weight().cpu().numpy().astype(np.float32) if self.platform.linear
                               else None,
                               controls=layer.controls.cpu().numpy().astype(np.float32),
                               gain=layer.gain.cpu().numpy().astype(np.float32),
                               bias=layer.bias.cpu().numpy().astype(np.float32), shape=layer.shape)
                    for k, layer in enumerate(nominal.layers)]


#: Samples per forward pass when a whole set is scored: a conv front end's activations of all 60,000 MNIST
#: images at once took 4 GB; in batches of this size they take a few tens of MB.
EVALUATION_BATCH = 4096


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of samples classified correctly (evaluation mode, no noise), in batches of bounded memory."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(X), EVALUATION_BATCH):
            correct += int((model(X[start:start + EVALUATION_BATCH]).argmax(dim=1)
                            == y[start:start + EVALUATION_BATCH]).sum())
    model.train(was_training)
    return correct / len(X) if len(X) else float("nan")
