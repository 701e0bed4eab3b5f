"""Simulated chips: one model, many chips, evaluated in one batched computation over the chip axis.

A simulated chip realises, for every weight on ring (r, c)::

    x = h + offset[r, c] + k[r, c] * dT + shift[r, c] + crosstalk * (h_left + h_right)
    W = transfer(x; true device parameters[r, c]) + detector noise

with ``h`` the deployed heater setting, ``offset`` and the device parameters
the fabrication truth, ``k`` the drift coefficient, ``shift`` any extra
resonance shift (ageing), and the crosstalk from the neighbouring rings of the
same bank row (same tile).  Detector noise comes from a stream per device and
per evaluation, so a chip gives the same answer alone or in a fleet.

Everything is float32 numpy; chips are processed in chunks to bound memory.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from pnndeploy.errors import PnnError
from pnndeploy.mapping import Deployment, ring_index
from pnndeploy.onnx_io import ExportedModel
from pnndeploy.platforms import get_platform
from pnndeploy.profiles import DeviceProfile


@dataclass
class Conditions:
    """What the chips experience during one evaluation."""

    delta_T: float | np.ndarray = 0.0        # K since calibration: scalar or one per chip
    ring_shift: np.ndarray | None = None     # (chips, R, C) extra resonance shift, control units
    eval_seed: int = 0                       # picks the detector-noise draw


def device_stream(device_id: str, eval_seed: int, layer: int) -> np.random.Generator:
    """The noise stream of one device, evaluation and layer (independent of the fleet around it)."""
    key = int.from_bytes(hashlib.sha256(device_id.encode()).digest()[:8], "big")
    return np.random.default_rng(np.random.SeedSequence([eval_seed, key, layer]))


class SimulatedFleet:
    """Chips holding one deployed model, stacked along a leading chip axis."""

    def __init__(self, model: ExportedModel, profiles: Sequence[DeviceProfile],
                 deployments: Sequence[Deployment]) -> None:
        if not profiles:
            raise PnnError("no devices to evaluate; name one with --device or use --fleet")
        for profile in profiles:
            if not profile.simulated:
                raise PnnError(
                    f"device {profile.device_id!r} is a real chip (its profile has no fabrication truth); "
                    "evaluating it needs a hardware backend, and none is configured in this pnndeploy")
        shapes = {p.shape for p in profiles}
        if len(shapes) != 1:
            raise PnnError(f"devices have different array shapes {sorted(shapes)}; evaluate them in "
                           "separate runs")
        self.model = model
        self.platform = get_platform(model.platform)
        self.device_ids = [p.device_id for p in profiles]
        self.array = profiles[0].shape
        f32 = np.float32
        self.crosstalk = np.array([p.environment.crosstalk for p in profiles], f32)[:, None, None]
        self.noise = np.array([p.environment.detector_noise for p in profiles], f32)[:, None, None]
        self.layers: list[dict[str, np.ndarray]] = []
        for k, layer in enumerate(model.layers):
            ri, ci = ring_index(layer.weight.shape, self.array)
            entry = {
                "ri": ri, "ci": ci,
                "settings": np.stack([d.layers[k].settings for d in deployments]).astype(f32),
                "offset": np.stack([p.fabrication[self.platform.offset_name][ri, ci] for p in profiles]).astype(f32),
                "drift": np.stack([p.environment.drift_coefficient[ri, ci] for p in profiles]).astype(f32),
                # crosstalk reaches only neighbours in the same bank row of the same tile
                "has_left": (ci > 0).astype(f32)[None],
                "has_right": ((ci < self.array[1] - 1) & (np.arange(layer.weight.shape[1]) < layer.weight.shape[1] - 1)[None, :]).astype(f32)[None],
            }
            for name in self.platform.param_units:
                entry[name] = np.stack([p.fabrication[name][ri, ci] for p in profiles]).astype(f32)
            self.layers.append(entry)

    def __len__(self) -> int:
        return len(self.device_ids)

    def realised_weights(self, k: int, chips: slice, conditions: Conditions) -> np.ndarray:
        """Weights of layer ``k`` as the chips in ``chips`` realise them, (chips, out, in)."""
        L = self.layers[k]
        h = L["settings"][chips]
        left = np.zeros_like(h)
        left[..., 1:] = h[..., :-1]
        right = np.zeros_like(h)
        right[..., :-1] = h[..., 1:]
        x = h + L["offset"][chips] + self.crosstalk[chips] * (left * L["has_left"] + right * L["has_right"])
        dT = np.asarray(conditions.delta_T, dtype=np.float32)
        if dT.ndim == 0:
            x = x + L["drift"][chips] * dT
        else:
            x = x + L["drift"][chips] * dT[chips, None, None]
        if conditions.ring_shift is not None:
            x = x + conditions.ring_shift[chips][:, L["ri"], L["ci"]].astype(np.float32)
        params = {name: L[name][chips] for name in self.platform.param_units}
        W = self.platform.transfer(x, **params).astype(np.float32)
        noise = self.noise[chips]
        if np.any(noise > 0):
            draws = np.stack([
                device_stream(self.device_ids[i], conditions.eval_seed, k).standard_normal(
                    W.shape[1:], dtype=np.float32)
                for i in range(*chips.indices(len(self)))])
            W = W + noise * draws
        return W

    def logits(self, X_scaled: np.ndarray, conditions: Conditions, chips: slice) -> np.ndarray:
        """(chips, samples, classes) logits of the chips in ``chips``."""
        h = np.asarray(X_scaled, dtype=np.float32)[None]
        for k, layer in enumerate(self.model.layers):
            W = self.realised_weights(k, chips, conditions)
            h = np.matmul(h, W.transpose(0, 2, 1)) * layer.gain + layer.bias
            if k < len(self.model.layers) - 1:
                np.maximum(h, 0.0, out=h)
        return h

    def accuracy(self, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions | None = None,
                 chunk: int = 32, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Accuracy of every chip, (chips,) float64; ``progress(n)`` after each chunk of n chips."""
        conditions = conditions or Conditions()
        out = np.empty(len(self), dtype=np.float64)
        for start in range(0, len(self), chunk):
            chips = slice(start, min(start + chunk, len(self)))
            pred = self.logits(X_scaled, conditions, chips).argmax(axis=2)
            out[chips] = (pred == np.asarray(y)[None]).mean(axis=1)
            if progress is not None:
                progress(chips.stop - chips.start)
        return out
