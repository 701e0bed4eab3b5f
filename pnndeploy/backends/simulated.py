"""A chip played from a simulated profile's fabrication truth: what `pnndeploy chip serve` puts on the network.

It measures what the fleet simulator computes, through the same torch physics
(the platform's :meth:`~pnndeploy.platforms.base.Platform.fleet_forward` at the
programmed settings, the truth's offsets and drift at the station's
temperature, the profile's detector noise), in float64, plus a measurement
noise on every output, drawn afresh at every measurement, as a detector would.
The detector noise is drawn again whenever a layer is programmed or the
temperature changes.  In-process it is the ``simulated`` backend (calibration and
in-situ training of a simulated chip without a server); behind
:mod:`pnndeploy.backends.server` it is a networked chip whose truth the client
never sees.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pnndeploy import __version__
from pnndeploy.backends.base import BackendError, ChipBackend, ChipInfo, LayerProgram
from pnndeploy.errors import PnnError
from pnndeploy.formats.profiles import DeviceProfile, read_profile
from pnndeploy.platforms.faults import faulty_mask, realised_settings, resting_profile
from pnndeploy.platforms.base import ChipState

#: Default std of the noise on every measured output (weight units), on top of the weight noise.
MEASUREMENT_NOISE = 0.002
#: Layer slots a simulated chip holds, and the largest layer it accepts.
MAX_LAYERS, MAX_LAYER_VALUES = 16, 1 << 20


class SimulatedChip(ChipBackend):
    """One simulated chip on a simulated station with a thermo-electric controller."""

    kind = "simulated"

    def __init__(self, address: str = "", options: Mapping[str, Any] | None = None, timeout: float = 10.0,
                 profile: DeviceProfile | None = None, measurement_noise: float = MEASUREMENT_NOISE,
                 seed: int = 0) -> None:
        super().__init__(address, options, timeout)
        self._seed = seed
        self._default_noise = measurement_noise
        self.slots: dict[int, tuple[tuple[int, int], dict[str, Any]]] = {}
        self._truth: dict[tuple[int, int], dict[str, Any]] = {}     # per layer shape a slot holds
        self._delta: tuple[float, torch.Tensor] | None = None
        self._noise: dict[int, Any] = {}
        self.profile: DeviceProfile | None = None
        if profile is not None:
            self._play(profile)

    def _play(self, profile: DeviceProfile) -> None:
        """Take the chip's truth from ``profile`` (a simulated one)."""
        address, measurement_noise, seed = self.address, self._default_noise, self._seed
        if not profile.simulated:
            raise BackendError(f"profile {address or profile.device_id} has no fabrication truth: a simulated chip "
                               "can only be played from a simulated profile (`pnndeploy fleet make`)")
        self.profile = profile
        self.platform = profile.chip_platform
        #: The truth the physics runs on: faulty devices folded into the offsets (:func:`resting_profile`), once.
        self.resting = resting_profile(self.platform, profile)
        self._truth = {}
        try:
            self.measurement_noise = float(self.options.get("measurement_noise", measurement_noise))
            seed = int(self.options.get("seed", seed))
        except (TypeError, ValueError):
            raise BackendError("backend options measurement_noise and seed must be numbers") from None
        if not 0.0 <= self.measurement_noise < 1.0:
            raise BackendError(f"measurement_noise {self.measurement_noise} is outside [0, 1)")
        self.reference_C = float(profile.calibration_temperature_C)   # the truth's offsets hold at this temperature
        self.temperature_C = self.reference_C
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------------------------------ session
    def open(self) -> ChipInfo:
        return self.info()

    def _ready(self) -> None:
        """Read the chip's profile on first use when it was named by ``address``: when a profile's backend group
        named it, by a plain device name in the folder of the profile that names it (a profile from someone else
        cannot make pnndeploy read any other file); a path only when no profile named it (a script's own
        choice, as ``SimulatedChip(path)``)."""
        if self.profile is None:
            self._play(read_profile(self._profile_path()))

    def _profile_path(self) -> Any:
        from pnndeploy.formats.profile_folder import check_device_name

        folder = self.trust.folder
        if folder is None:
            return self.address
        try:
            check_device_name(self.address)
        except PnnError:        # a path or bad characters: said for the backend group
            raise BackendError(f"backend address {self.address!r} of a simulated chip must be the plain name of a "
                               "profile beside the one that names it (no path); fix the profile's backend group") \
                from None
        return folder.parent / f"{self.address}.h5"

    def close(self) -> None:
        pass

    def info(self) -> ChipInfo:
        self._ready()
        supports = {"temperature"} | ({"measure_transfer"} if self.platform.sweep_calibration else set())
        return ChipInfo(device_id=self.profile.device_id, platform=self.profile.platform,
                        array=tuple(self.profile.shape), firmware=f"pnndeploy-simulated-chip {__version__}",
                        supports=frozenset(supports), temperature_C=self.temperature_C)

    # ------------------------------------------------------------------------------------------ control
    def program(self, layers: Sequence[LayerProgram]) -> None:
        self._ready()
        for layer in layers:
            out_f, in_f = (int(n) for n in layer.weight_shape)
            if not 0 <= layer.index < MAX_LAYERS:
                raise BackendError(f"layer slot {layer.index} does not exist (this chip holds 0..{MAX_LAYERS - 1})")
            if out_f < 1 or in_f < 1 or out_f * in_f > MAX_LAYER_VALUES:
                raise BackendError(f"layer {layer.index}: weight shape {out_f}x{in_f} is not one this chip can hold")
            expected = self.platform.control_shape((out_f, in_f))
            settings = np.asarray(layer.settings, np.float64)
            if settings.shape != tuple(expected):
                raise BackendError(f"layer {layer.index}: settings of shape {settings.shape}, but a {out_f}x{in_f} "
                                   f"{self.platform.name} layer takes {tuple(expected)}")
            if not np.isfinite(settings).all():
                raise BackendError(f"layer {layer.index}: settings hold NaN or inf")
            lo, hi = self.profile.environment.heater_range
            settings = np.minimum(np.maximum(settings, lo), hi)    # the DAC cannot drive beyond its range
            settings = realised_settings(self.platform, settings, self.profile.fabrication, self.profile.shape)
            before = self.slots.get(layer.index)
            self.slots[layer.index] = ((out_f, in_f), self._layer_state((out_f, in_f), settings))
            self._noise.pop(layer.index, None)
            if before is not None and before[0] != (out_f, in_f):
                self._forget_unheld_truth()

    def _forget_unheld_truth(self) -> None:
        """Drop the truth kept for shapes no slot holds any more (the slots bound what is kept)."""
        held = {shape for shape, _ in self.slots.values()}
        self._truth = {shape: truth for shape, truth in self._truth.items() if shape in held}

    def _layer_state(self, shape: tuple[int, int], settings: np.ndarray) -> dict[str, Any]:
        """The platform's simulation state of a layer at ``settings``: the truth gathered for the layer's shape
        (:meth:`~pnndeploy.platforms.base.Platform.fleet_truth`) is kept while a slot holds that shape (the same
        tensors, the same bits), so re-programming a layer costs only its settings' part."""
        if shape not in self._truth:
            self._truth[shape] = self.platform.fleet_truth(shape, [self.resting], self.profile.shape, "cpu",
                                                           torch.float64)
        return self.platform.fleet_programmed(self._truth[shape], [settings])

    def set_temperature(self, celsius: float) -> None:
        self._ready()
        if not np.isfinite(celsius) or not -40.0 <= celsius <= 125.0:
            raise BackendError(f"temperature {celsius} degC is outside what the station's TEC can reach (-40..125)")
        if celsius != self.temperature_C:
            self.temperature_C = float(celsius)
            self._noise.clear()

    # -------------------------------------------------------------------------------------- measurement
    def _detector_noise(self, layer: int) -> Any:
        """This layer's detector-noise draw (the platform's noise shape), kept until it is re-programmed or the
        temperature changes; None for a noiseless chip."""
        noise = self.profile.environment.detector_noise
        if noise <= 0:
            return None
        if layer not in self._noise:
            shape, _ = self.slots[layer]
            draw = noise * self.rng.standard_normal((1, *self.platform.noise_shape(shape)))
            self._noise[layer] = torch.from_numpy(draw)
        return self._noise[layer]

    def infer(self, layer: int, x: np.ndarray) -> np.ndarray:
        self._ready()
        if layer not in self.slots:
            raise BackendError(f"layer slot {layer} is not programmed; program it first")
        (out_f, in_f), state = self.slots[layer]
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != in_f:
            raise BackendError(f"layer {layer} takes inputs of {in_f} values, got shape {x.shape}")
        conditions = ChipState(self._delta_T())
        with torch.inference_mode():
            y = self.platform.fleet_forward(state, slice(0, 1), torch.from_numpy(np.ascontiguousarray(x.T)),
                                            conditions, self._detector_noise(layer))[0].T.numpy()
        if self.measurement_noise > 0:
            y = y + self.measurement_noise * self.rng.standard_normal(y.shape)
        return y

    def _delta_T(self) -> torch.Tensor:
        """The station's temperature less the truth's reference, as the tensor the physics takes: made once per
        temperature (a measurement per layer and step asked for it anew; the tensors are never written)."""
        delta = self.temperature_C - self.reference_C
        if self._delta is None or self._delta[0] != delta:
            self._delta = (delta, torch.tensor(delta, dtype=torch.float64))
        return self._delta[1]

    def measure_transfer(self, rows: np.ndarray, cols: np.ndarray, controls: np.ndarray) -> np.ndarray:
        self._ready()
        if not self.platform.sweep_calibration:
            return super().measure_transfer(rows, cols, controls)
        rows, cols = np.asarray(rows), np.asarray(cols)
        R, C = self.profile.shape
        if rows.shape != cols.shape or rows.ndim != 1 or np.any((rows < 0) | (rows >= R) | (cols < 0) | (cols >= C)):
            raise BackendError(f"sweep devices must be pairs of rows in 0..{R - 1} and cols in 0..{C - 1}")
        lo, hi = self.profile.environment.heater_range
        h = np.clip(np.asarray(controls, np.float64), lo, hi)[None, :].repeat(len(rows), axis=0)
        faulty = faulty_mask(self.profile.fabrication)
        if faulty is not None:                    # a faulty device ignores the sweep (its stuck drive, and that of
            h = np.where(faulty[rows, cols][:, None], 0.0, h)      # a stuck neighbour, are in the resting truth)
        truth = self.resting.fabrication
        W = self.platform.device_response(truth, self.profile.environment.drift_coefficient,
                                          rows, cols, h, self.temperature_C - self.reference_C)
        sigma = float(np.hypot(self.profile.environment.detector_noise, self.measurement_noise))
        return W + sigma * self.rng.standard_normal(W.shape) if sigma > 0 else W
