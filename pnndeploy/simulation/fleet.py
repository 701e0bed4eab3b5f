"""Simulated chips: one model, many chips, evaluated in one batched computation over the chip axis.

The platform says how a chip's settings, fabrication truth and drift make the
weights (:meth:`~pnndeploy.platforms.base.Platform.fleet_weights`; for a ring
bank ``x = h + offset + k * dT + shift + crosstalk * (h_left + h_right)`` and
``W = transfer(x; true device parameters)``), computed once per layer for what
does not change between evaluations.  Detector noise is added here, from a
stream per device and per evaluation, and every chip's products have the same
shape in any batch, so a chip gives the same outputs, bit for bit, alone or in
a fleet.

Everything is float32 numpy; chips are processed in chunks to bound memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pnndeploy.errors import PnnError
from pnndeploy.formats.deployments import Deployment
from pnndeploy.formats.onnx_io import ExportedModel
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import get_platform
from pnndeploy.simulation.streams import device_rng


@dataclass
class Conditions:
    """What the chips experience during one evaluation."""

    delta_T: float | np.ndarray = 0.0        # K since calibration: scalar or one per chip
    #: (chips, *platform.device_shape(array)) extra shift of every control device (ageing), control units.
    control_shift: np.ndarray | None = None
    eval_seed: int = 0                       # picks the detector-noise draw
    #: A whole-setup perturbation, {axis name: value} of ``platform.perturbation_axes`` (misalignment).
    perturbation: dict[str, float] | None = None


#: Tag of the detector-noise streams.  SeedSequence ignores trailing zeros, so without a non-zero tag
#: (eval seed 0, layer 0) would be the very stream that drew the chip's fabrication (fleet seed 0).
NOISE_STREAM = 0x6E6F6973
#: Chips evaluated together: enough to amortise per-call overhead, few enough that a batch's
#: activations stay in cache (at 512 chips, one batch of all was slower than batches of 128).
CHIPS_PER_BATCH = 128


def device_stream(device_id: str, eval_seed: int, layer: int) -> np.random.Generator:
    """The noise stream of one device, evaluation and layer (independent of the fleet around it)."""
    return device_rng(device_id, eval_seed, NOISE_STREAM, layer)


class SimulatedFleet:
    """Chips holding one deployed model, stacked along a leading chip axis.

    What does not change between evaluations is computed once: per layer, the
    platform's static part (for rings: setting + offset + crosstalk of every
    weight and the gathered device parameters), and the detector-noise draws of
    each evaluation seed.  An evaluation then costs the platform's drift and
    transfer step and one matrix product per chip and layer, batched over chips.
    """

    def __init__(self, model: ExportedModel, profiles: Sequence[DeviceProfile],
                 deployments: Sequence[Deployment]) -> None:
        if not profiles:
            raise PnnError("no devices to evaluate; name one with --device or use --fleet")
        for profile in profiles:
            if not profile.simulated:
                raise PnnError(
                    f"device {profile.device_id!r} is a real chip (its profile has no fabrication truth); "
                    "evaluating it needs a hardware backend: name one in its profile with `pnndeploy chip connect`")
        shapes = {p.shape for p in profiles}
        if len(shapes) != 1:
            raise PnnError(f"devices have different array shapes {sorted(shapes)}; evaluate them in "
                           "separate runs")
        self.model = model
        self.platform = get_platform(model.platform)
        self.device_ids = [p.device_id for p in profiles]
        self.array = profiles[0].shape
        self.noise_std = np.array([p.environment.detector_noise for p in profiles], np.float32)[:, None, None]
        self._noise_cache: dict[int, list[np.ndarray]] = {}
        self._front_cache: tuple[np.ndarray, np.ndarray] | None = None
        self.layers: list[dict[str, np.ndarray]] = [
            self.platform.fleet_layer(layer.weight.shape, [d.layers[k].settings for d in deployments], profiles,
                                      self.array)
            for k, layer in enumerate(model.layers)]

    def __len__(self) -> int:
        return len(self.device_ids)

    def _noise(self, eval_seed: int) -> list[np.ndarray] | None:
        """Detector noise of every chip and layer for one evaluation seed (drawn once, then reused)."""
        if not np.any(self.noise_std > 0):
            return None
        if eval_seed not in self._noise_cache:
            if len(self._noise_cache) >= 16:
                self._noise_cache.pop(next(iter(self._noise_cache)))
            self._noise_cache[eval_seed] = [
                self.noise_std * np.stack([
                    device_stream(name, eval_seed, k).standard_normal(layer.weight.shape, dtype=np.float32)
                    for name in self.device_ids])
                for k, layer in enumerate(self.model.layers)]
        return self._noise_cache[eval_seed]

    def _features(self, X_scaled: np.ndarray) -> np.ndarray:
        """The digital front end's output (the same on every chip), kept for the last input array seen."""
        if self.model.digital is None:
            return X_scaled
        if self._front_cache is None or self._front_cache[0] is not X_scaled:
            self._front_cache = (X_scaled, self.model.features(X_scaled))
        return self._front_cache[1]

    def realised_weights(self, k: int, chips: slice, conditions: Conditions) -> np.ndarray:
        """Weights of layer ``k`` as the chips in ``chips`` realise them, (chips, out, in)."""
        extra = {}
        if conditions.perturbation:     # only platforms with perturbation axes take the keyword
            if not self.platform.perturbation_axes:
                raise PnnError(f"{self.platform.name} chips have no whole-setup perturbation "
                               f"({', '.join(sorted(conditions.perturbation))}); leave Conditions.perturbation empty")
            extra["perturbation"] = conditions.perturbation
        W = self.platform.fleet_weights(self.layers[k], chips, conditions.delta_T, conditions.control_shift, **extra)
        noise = self._noise(conditions.eval_seed)
        if noise is not None:
            W += noise[k][chips]
        return W

    def scores(self, X_scaled: np.ndarray, conditions: Conditions, chips: slice) -> np.ndarray:
        """(chips, classes, samples) outputs of the chips in ``chips``, samples on the fast axis.

        This layout keeps every product a plain contiguous GEMM, (out, in) @
        (in, samples) per chip.  Each chip gets its own product of the same
        shape however many chips are evaluated with it: one (chips*out, in)
        product for the shared first layer was faster, but BLAS picks its
        kernel by size, so a chip's outputs then changed in the last bits
        with the size of the fleet around it.
        """
        XT = np.ascontiguousarray(np.asarray(self._features(X_scaled), dtype=np.float32).T)
        h = None
        for k, layer in enumerate(self.model.layers):
            W = self.realised_weights(k, chips, conditions)
            W *= layer.gain[:, None]            # the digital gain folded into the (smaller) weights
            h = np.matmul(W, XT if h is None else h)
            h += layer.bias[:, None]
            if k < len(self.model.layers) - 1:
                np.maximum(h, 0.0, out=h)
        return h

    def logits(self, X_scaled: np.ndarray, conditions: Conditions, chips: slice) -> np.ndarray:
        """(chips, samples, classes) logits of the chips in ``chips`` (a view of :meth:`scores`)."""
        return self.scores(X_scaled, conditions, chips).transpose(0, 2, 1)

    def accuracy(self, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions | None = None,
                 chunk: int = CHIPS_PER_BATCH, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Accuracy of every chip, (chips,) float64; ``progress(n)`` after each chunk of n chips."""
        conditions = conditions or Conditions()
        out = np.empty(len(self), dtype=np.float64)
        y = np.asarray(y)
        for start in range(0, len(self), chunk):
            chips = slice(start, min(start + chunk, len(self)))
            out[chips] = correct_fraction(self.scores(X_scaled, conditions, chips), y)
            if progress is not None:
                progress(chips.stop - chips.start)
        return out


def correct_fraction(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per chip, the fraction of samples whose top class is ``y``: ``(scores.argmax(1) == y).mean(1)``.

    ``scores`` is (chips, classes, samples).  numpy's argmax over the short
    class axis loops per (chip, sample) and cost as much as the matrix
    products; a max over classes with samples on the fast axis is a few
    vector passes.  Ties, NaN and labels that are not class indices go to
    numpy's argmax, so the result is exactly the definition's in every case.
    """
    y = np.asarray(y)
    chips, classes, samples = scores.shape

    def by_definition() -> np.ndarray:
        return (scores.argmax(axis=1) == y).mean(axis=1)

    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != samples or samples == 0 \
            or y.min() < 0 or y.max() >= classes:
        return by_definition()
    top = scores.max(axis=1)
    hit = scores == top[:, None, :]
    if not np.isfinite(top).all() or (hit.sum(axis=1) > 1).any():
        return by_definition()
    return hit[:, y, np.arange(samples)].mean(axis=1)
