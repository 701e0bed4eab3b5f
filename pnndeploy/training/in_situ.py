"""In-situ training: every forward pass of the on-chip layers is measured on a chip, the backward pass is digital.

Physics-aware training (PAT, Wright et al. 2022) in its straight-through form:
at each on-chip layer the digital model computes ``z = x W(θ)^T`` as usual, the
chip is programmed with the settings that realise ``W(θ)`` through its
calibration (exactly what :func:`~pnndeploy.deploy.mapping.map_model` will program
at deployment) and measures ``y`` for the same inputs, and the layer returns
``z + (y - z).detach()``: the measured value forward, the digital model's Jacobian
backward.  The loss, the next layer's input and the training accuracy are
therefore the chip's, and the gradient is the model's.

SAT + PAT needs nothing more: SAT's ascent moves θ, the next forward pass
re-programs the chip at θ + ε, so both of SAT's passes run forward on the chip.
The same holds for spec-sat's perturbed passes.

A layer's settings depend on its own parameters only, not on the layer before it: over a backend that can run
work while its station measures (:attr:`~pnndeploy.backends.base.ChipBackend.measures_meanwhile`, the http
backend's binary wire) the next layer of the pass is mapped while this one is measured, in the same thread
(no lock, no thread), and used only if that layer's parameters are still the bytes it was mapped from; what
that mapping raised is raised when the layer is reached, as without the look-ahead.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np
import torch

from pnndeploy.backends import BackendError, ChipBackend, LayerProgram
from pnndeploy.errors import PnnError
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import get_platform


class InSituChip:
    """A chip (through its backend) that measures every on-chip layer of a model while it trains."""

    def __init__(self, backend: ChipBackend, profile: DeviceProfile, programming: str = "calibrated") -> None:
        """``profile``: the chip as the mapping sees it at every step; ``programming`` names how (recorded):
        ``calibrated`` through the chip's calibration, ``as-trained`` through the nominal device (the caller passes
        the profile with the drawing's calibration: the paper's protocol, the trained phases programmed as they
        are)."""
        self.backend = backend
        self.profile = profile
        self.programming = programming
        self.platform = get_platform(profile.platform)
        self.programs = 0
        self.measurements = 0
        self.chip_seconds = 0.0            # wall time inside the backend (program + infer), station's time included
        self.map_seconds = 0.0             # mapping the layers onto the chip's calibration
        self._layers: list[Any] = []
        #: The next layer mapped while this one was measured: (index, its parameters' bytes, (settings, scale) or
        #: what the mapping raised).
        self._ahead: tuple[int, bytes, Any] | None = None

    def attach(self, model: Any) -> None:
        """Route the forward value of each on-chip layer of ``model`` through the chip."""
        if model.platform.name != self.profile.platform:
            raise PnnError(f"--in-situ {self.profile.device_id} is a {self.profile.platform} chip but the model is "
                           f"trained for {model.platform.name}; use a {model.platform.name} chip or --platform "
                           f"{self.profile.platform}")
        problem = model.platform.mismatch(self.profile.chip_platform, self.profile.shape)
        if problem:
            raise PnnError(f"--in-situ {self.profile.device_id}: {problem}")
        self.platform = model.platform          # with the options the model is trained for
        self._layers, self._ahead = list(model.layers), None
        for k, layer in enumerate(model.layers):
            layer.measure = partial(self.layer_forward, k)

    @staticmethod
    def detach(model: Any) -> None:
        for layer in model.layers:
            layer.measure = None

    def _target(self, layer: Any) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(weights the chip must realise (None for a layer that is not a weight matrix), the controls that guide
        the mapping, output scale) of a layer now."""
        with torch.no_grad():
            if hasattr(layer, "controls"):
                controls = layer.controls.detach().cpu()
                if not self.platform.linear:
                    return None, controls.double().numpy(), np.ones(layer.shape[0])
                W = self.platform.nominal_weights(controls, layer.shape)
                return W.double().numpy(), controls.double().numpy(), np.ones(W.shape[0])
            controls, _, row_scale = self.platform.weights_to_controls(layer.W.detach().cpu().double().numpy())
            W = self.platform.nominal_weights(torch.from_numpy(controls), tuple(layer.W.shape))
            return np.asarray(W, np.float64), controls, np.asarray(row_scale, np.float64)

    def _mapping(self, layer: Any) -> tuple[np.ndarray, np.ndarray]:
        """(settings that realise ``layer`` now through the chip's calibration, output scale)."""
        target, guide, scale = self._target(layer)
        settings = self.platform.layer_settings(target, guide, self.profile.calibration, self.profile.environment,
                                                self.profile.shape, self.platform.metadata(), tuple(layer.shape))
        return settings, scale

    def _mapped(self, index: int, layer: Any) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_mapping` of layer ``index``: the one made ahead if its parameters have not changed since."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == index and ahead[1] == _parameter_bytes(layer):
            if isinstance(ahead[2], Exception):
                raise ahead[2]
            return ahead[2]
        return self._mapping(layer)

    def _map_ahead(self, index: int, spent: list[float]) -> None:
        """Map layer ``index`` now for :meth:`_mapped` to use (what it raises is kept, raised there); its time
        added to ``spent``."""
        start, layer = time.perf_counter(), self._layers[index]
        key = _parameter_bytes(layer)
        try:
            outcome: Any = self._mapping(layer)
        except Exception as exc:                # noqa: BLE001 - raised when the layer is reached, as without this
            outcome = exc
        self._ahead = (index, key, outcome)
        spent[0] += time.perf_counter() - start

    def layer_forward(self, index: int, layer: Any, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The chip's measurement of layer ``index`` for inputs ``x``, carrying the digital ``z``'s gradient."""
        t0 = time.perf_counter()
        settings, scale = self._mapped(index, layer)
        t1 = time.perf_counter()
        self.map_seconds += t1 - t0
        program = LayerProgram(index, tuple(z.shape[-1:]) + (x.shape[-1],), settings)
        inputs, ahead = x.detach().cpu().double().numpy(), [0.0]
        if self.backend.measures_meanwhile and index + 1 < len(self._layers):
            y, programmed = self.backend.measure_layer(program, inputs, partial(self._map_ahead, index + 1, ahead))
        else:
            y, programmed = self.backend.measure_layer(program, inputs)
        self.programs += programmed
        self.measurements += 1
        self.map_seconds += ahead[0]
        self.chip_seconds += time.perf_counter() - t1 - ahead[0]
        if y.shape != tuple(z.shape):
            raise BackendError(f"in-situ chip {self.profile.device_id}: layer {index} returned shape {y.shape}, "
                               f"expected {tuple(z.shape)}")
        if not np.all(np.isfinite(y)):
            raise BackendError(f"in-situ chip {self.profile.device_id}: layer {index} returned NaN or inf outputs; "
                               "check the station's detectors (no model was written)")
        measured = torch.from_numpy(y * scale[None, :]).to(dtype=z.dtype, device=z.device)
        return z + (measured - z).detach()

    def summary(self) -> dict[str, Any]:
        """What the model file records about the chip it was trained on."""
        spec = self.profile.backend
        return {"device": self.profile.device_id, "backend": spec.kind if spec else "simulated",
                "address": spec.address if spec else None, "firmware": self.backend.info().firmware,
                "chip_device_id": self.backend.info().device_id, "programs": self.programs,
                "measurements": self.measurements, "chip_seconds": self.chip_seconds,
                "map_seconds": self.map_seconds, "programming": self.programming}


def _parameter_bytes(layer: Any) -> bytes:
    """The bytes of what :meth:`InSituChip._target` reads of a layer (its controls, or the baseline's W)."""
    parameter = layer.controls if hasattr(layer, "controls") else layer.W
    return parameter.detach().cpu().numpy().tobytes()
