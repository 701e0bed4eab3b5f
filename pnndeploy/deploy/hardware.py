"""A deployed model on a chip behind a backend: programmed once, measured in batches, scored from measured outputs.

:class:`HardwareChip` answers what :class:`~pnndeploy.simulation.fleet.SimulatedFleet`
answers (``scores``, ``accuracy`` under :class:`~pnndeploy.simulation.fleet.Conditions`),
for one chip, so transfer, audit and drift compensation run on it unchanged:

* ``delta_T`` sets the station's temperature to the calibration temperature plus
  ``delta_T`` (a station without a controller can only be measured as it is);
* a ``control_shift`` must be one common bias (what drift compensation re-fits):
  the chip is re-programmed with every setting plus that bias.  Ageing cannot be
  applied to a real chip on demand, so such a shift is refused;
* the detector's noise is the chip's own: ``eval_seed`` has no effect.

The on-chip layers are measured one at a time (:meth:`ChipBackend.infer`); the
digital front end, gains, biases and ReLUs are applied here, as on a station's
host computer.  A sample with a non-finite measured output is counted in
:attr:`HardwareChip.invalid` and left out of the accuracy, never averaged in.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from pnndeploy.backends import BackendError, ChipBackend, LayerProgram, Trust, check_chip, open_backend
from pnndeploy.backends.credentials import CREDENTIALS_DIR
from pnndeploy.errors import PnnError
from pnndeploy.formats.deployments import Deployment
from pnndeploy.formats.onnx_io import ExportedModel
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import platform_for
from pnndeploy.simulation.fleet import Conditions

#: Default seconds one exchange with a station may take (`--timeout`).
DEFAULT_TIMEOUT = 10.0
#: Inputs per measurement request, unless the chip allows fewer.
BATCH = 128


def open_chip(profile: DeviceProfile, timeout: float = DEFAULT_TIMEOUT, insecure: bool = False) -> ChipBackend:
    """The opened backend of ``profile``, checked to be the chip the profile describes.

    The files its backend names are looked up in the ``tokens/`` folder beside the profile file;
    ``insecure`` (the user's ``--insecure``) lets a token go to a non-loopback station in plain HTTP.
    """
    spec = profile.backend
    if spec is None:
        raise PnnError(f"device {profile.device_id!r} names no backend; add one with `pnndeploy chip connect`")
    where = f"device {profile.device_id} ({spec.kind} {spec.address})"
    trust = Trust(None if spec.folder is None else spec.folder / CREDENTIALS_DIR, insecure)
    backend = open_backend(spec.kind, spec.address, spec.options, timeout, trust)
    try:
        check_chip(backend.info(), profile.platform, profile.shape, spec.options.get("device"), where)
    except BaseException:
        backend.close()
        raise
    return backend


class HardwareChip:
    """One chip holding one deployed model, evaluated through its backend."""

    def __init__(self, model: ExportedModel, profile: DeviceProfile, deployment: Deployment,
                 backend: ChipBackend) -> None:
        self.model = model
        self.profile = profile
        self.deployment = deployment
        self.backend = backend
        self.platform = platform_for(model.platform, model.platform_params)
        self.array = profile.shape
        self.device_ids = [profile.device_id]
        info = backend.info()
        self.has_temperature = "temperature" in info.supports
        self.batch = max(1, min(BATCH, info.max_batch))
        self._delta_T: float | None = None
        self._bias: float | None = None
        #: Samples of the last :meth:`accuracy` whose measured outputs were not all finite, and the most seen.
        self.invalid = 0
        self.max_invalid = 0
        #: Called with the number of samples after each measured batch (a progress bar).
        self.progress: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return 1

    def close(self) -> None:
        self.backend.close()

    # ---------------------------------------------------------------------------------------- control
    def _apply(self, conditions: Conditions) -> None:
        dT = np.asarray(conditions.delta_T, np.float64)
        delta_T = float(dT.reshape(-1)[0]) if dT.ndim else float(dT)
        bias = 0.0
        if conditions.control_shift is not None:
            shift = np.asarray(conditions.control_shift, np.float64)
            if shift.size and np.ptp(shift) > 1e-12:
                raise BackendError(f"device {self.profile.device_id} is a real chip: it cannot be aged on demand "
                                   "(only a common bias can be applied); leave ageing sweeps to simulated chips")
            bias = float(shift.reshape(-1)[0]) if shift.size else 0.0
        if delta_T != self._delta_T:
            if self.has_temperature:
                self.backend.set_temperature(self.profile.calibration_temperature_C + delta_T)
            elif delta_T != 0.0:
                raise BackendError(f"device {self.profile.device_id}: its station has no temperature controller, "
                                   f"so it cannot be measured at {delta_T:+g} K; drop --temperature-delta / the "
                                   "temperature sweep for it, or add a TEC to the station's backend")
            self._delta_T = delta_T
        if bias != self._bias:
            self.backend.program([LayerProgram(k, self._programmed_shape(k), self.deployment.layers[k].settings + bias)
                                  for k in range(len(self.model.layers))])
            self._bias = bias

    def _programmed_shape(self, k: int) -> tuple[int, int]:
        """The (outputs, inputs) layer ``k`` is programmed as: the model's, or with its outputs placed on other rows
        (the deployment's ``rows``), as many rows as its settings have."""
        layer, placed = self.model.layers[k], self.deployment.layers[k]
        return layer.shape if placed.rows is None else (int(placed.settings.shape[0]), layer.shape[1])

    def restore(self) -> None:
        """Put the station back at the calibration temperature (after a measurement at another one)."""
        if self.has_temperature and self._delta_T not in (None, 0.0):
            self.backend.set_temperature(self.profile.calibration_temperature_C)
            self._delta_T = 0.0

    # ------------------------------------------------------------------------------------ measurement
    def scores(self, X_scaled: np.ndarray, conditions: Conditions | None = None,
               chips: slice | None = None) -> np.ndarray:
        """(1, classes, samples) outputs computed from the chip's measured layer outputs."""
        self._apply(conditions or Conditions())
        features = np.asarray(self.model.features(X_scaled) if self.model.digital is not None else X_scaled,
                              np.float64)
        out = np.empty((features.shape[0], self.model.n_classes))
        for start in range(0, len(features), self.batch):
            h = features[start:start + self.batch]
            for k, layer in enumerate(self.model.layers):
                h = self.backend.infer(k, h)
                rows = self._programmed_shape(k)[0]
                if h.shape != (min(self.batch, len(features) - start), rows):
                    raise BackendError(f"device {self.profile.device_id}: layer {k} returned shape {h.shape}, "
                                       f"expected {(len(h), rows)}")
                if self.deployment.layers[k].rows is not None:      # each output read off the row it sits on
                    h = h[:, self.deployment.layers[k].rows]
                h = h * layer.gain + layer.bias
                if k < len(self.model.layers) - 1:
                    h = np.maximum(h, 0.0)
            out[start:start + len(h)] = h
            if self.progress is not None:
                self.progress(len(h))
        return out.T[None]

    def accuracy(self, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions | None = None,
                 chunk: int | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """(1,) accuracy over the samples whose measured outputs are all finite (NaN if none is)."""
        scores = self.scores(X_scaled, conditions)[0]             # (classes, samples)
        valid = np.isfinite(scores).all(axis=0)
        self.invalid = int((~valid).sum())
        self.max_invalid = max(self.max_invalid, self.invalid)
        if progress is not None:
            progress(1)
        if not valid.any():
            return np.array([np.nan])
        return np.array([float((scores[:, valid].argmax(axis=0) == np.asarray(y)[valid]).mean())])
