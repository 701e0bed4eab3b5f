"""What every on-chip weight technology must provide.

Mapping, fleet evaluation and audits work through this interface only, so a
new platform (an MZI mesh, a diffractive layer) plugs in beside the microring
without touching them.  The common model of a device is:

* each on-chip weight is set by one *control* (a detuning, a phase);
* the chip realises ``control = setting + offset + drift_coefficient * dT``
  where ``offset`` is a per-device fabrication error the setting must cancel;
* the weight is ``transfer(control, **device_params)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

import numpy as np


class Platform(ABC):
    """A weight-device technology: transfer function, its inverse and its fabrication model."""

    name: str
    #: Units of the control parameter (what the heater/phase shifter sets).
    control_units: str
    #: Name of the additive per-device control error in profiles.
    offset_name: str
    #: Per-device parameters of the transfer function and their units.
    param_units: Mapping[str, str]
    #: Nominal values of those parameters (the digital model used for training).
    nominal: Mapping[str, float]
    #: Range of the trainable control (inclusive), in ``control_units``.
    control_range: tuple[float, float]
    #: Typical shift of a control per kelvin (control units / K): the common-mode thermal drift.
    nominal_drift: float

    @abstractmethod
    def transfer(self, control: Any, **params: Any) -> Any:
        """Weight realised by a device at ``control``; works on numpy arrays and torch tensors."""

    @abstractmethod
    def derivative(self, control: Any, **params: Any) -> Any:
        """dW/dcontrol, for sensitivity reports and tests of the transfer function."""

    @abstractmethod
    def inverse(self, weight: np.ndarray, sign: np.ndarray | float = 1.0, limit: float | None = None,
                **params: Any) -> tuple[np.ndarray, np.ndarray]:
        """Control that realises ``weight``; returns (control, reachable mask).

        Controls are confined to ``control_range``, or to [-limit, limit] when
        ``limit`` is given (mapping passes infinity and lets the heater range
        decide).  Weights outside the reachable range are clipped to the
        nearest reachable value and flagged ``False`` in the mask.  ``sign``
        picks the branch where the transfer function is symmetric.
        """

    @abstractmethod
    def init_controls(self, shape: tuple[int, ...], generator: Any, bound: float = 0.9) -> Any:
        """Initial trainable controls (a torch tensor) whose weights spread over [-bound, bound]."""

    @abstractmethod
    def sample_fabrication(self, spec: Mapping[str, Any], shape: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw the truth of one fabricated array from a process spec.

        Returns ``{offset_name: ..., **param_units keys, "drift_coefficient": ...}``,
        each of ``shape``.
        """

    def params_dict(self) -> dict[str, float]:
        """Nominal parameters as a plain dict (for metadata)."""
        return {k: float(v) for k, v in self.nominal.items()}
