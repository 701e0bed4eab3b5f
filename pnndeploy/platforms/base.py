"""What every on-chip weight technology must provide, one whole layer at a time.

Training, mapping, fleet evaluation, profiles and audits work through this
interface only, so a platform plugs in without touching them.  A platform owns
an on-chip layer:

* its **controls**: the trainable physical parameters of a layer (a detuning
  per ring, the phases of a mesh per tile), :meth:`Platform.control_shape`;
* :meth:`Platform.nominal_weights`: the logical weights W the nominal (ideal)
  device realises at those controls, differentiable in torch (training);
* :meth:`Platform.weights_to_controls`: controls that realise a given W on the
  nominal device (exporting the baseline, which trains W itself);
* :meth:`Platform.map_layer`: the settings that realise a target W on one chip,
  through that chip's *calibration* (never its fabrication truth);
* :meth:`Platform.fleet_layer` / :meth:`Platform.fleet_weights`: the weights
  many simulated chips realise from their settings and fabrication truth under
  drift, vectorised over chips in numpy;
* its fabrication and drift model (:meth:`Platform.sample_fabrication`), the
  per-device fields of its profiles with units and shapes, and its ONNX
  parameters (:meth:`Platform.metadata`).

A chip realises ``control = setting + offset + drift_coefficient * dT (+ ageing
shift) (+ crosstalk)`` for every control device, where ``offset`` is the
fabrication error the setting must cancel; how the controls make W is the
platform's business (one weight per control for rings, every weight from many
phases for a mesh).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np


class Range(NamedTuple):
    """An allowed interval of a per-device parameter."""

    lo: float
    hi: float
    lo_inclusive: bool = False
    hi_inclusive: bool = True

    def contains(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values)
        above = values >= self.lo if self.lo_inclusive else values > self.lo
        below = values <= self.hi if self.hi_inclusive else values < self.hi
        return above & below

    def describe(self) -> str:
        left = "[" if self.lo_inclusive else "("
        right = "]" if self.hi_inclusive else ")"
        hi = "inf" if math.isinf(self.hi) else f"{self.hi:g}"
        return f"{left}{self.lo:g}, {hi}{right}"

    def clip(self, values: np.ndarray) -> np.ndarray:
        """``values`` moved into the range (open ends by one ulp)."""
        lo = self.lo if self.lo_inclusive else np.nextafter(self.lo, np.inf)
        hi = self.hi if self.hi_inclusive else np.nextafter(self.hi, -np.inf)
        return np.clip(values, lo, hi)


#: A per-device parameter with no range of its own must be > 0.
POSITIVE = Range(0.0, math.inf, lo_inclusive=False, hi_inclusive=False)


@dataclass(frozen=True)
class PerturbationAxis:
    """A perturbation of a whole chip or setup, beside temperature and ageing, that `audit` sweeps.

    Values are absolute (a rotation of 2 deg, a magnification of 1.1); ``centre`` is the unperturbed value.
    """

    name: str        # key in the audit document ("rotation_deg")
    label: str       # what a person reads ("rotation")
    units: str
    centre: float
    sweep: str       # default grid, LO:HI:STEP
    require: float   # default requirement: the verdict needs the threshold within centre +- require


@dataclass
class LayerMapping:
    """One on-chip layer mapped onto one chip."""

    settings: np.ndarray   # what is programmed (control units), shape platform.control_shape(...)
    clipped: int           # weights (or controls) the chip cannot realise or the DAC cannot set
    residual: float        # ||W realised by the calibrated model - W target||_F at these settings


def quantise(settings: np.ndarray, heater_range: tuple[float, float], bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Settings on the DAC grid of ``bits`` over ``heater_range``; returns (quantised, in-range mask)."""
    lo, hi = heater_range
    step = (hi - lo) / (2 ** bits - 1)
    inside = (settings >= lo) & (settings <= hi)
    codes = np.round((np.clip(settings, lo, hi) - lo) / step)
    return lo + codes * step, inside


class Platform(ABC):
    """A weight-device technology: how controls make a layer's weights, and how chips of it are made."""

    name: str
    #: What the chip is, for reports ("a microring weight bank").
    description: str
    #: Units of the control parameters (what the heaters / phase shifters set).
    control_units: str
    #: What one control is called in help and reports ("detuning", "phase").
    control_noun: str
    #: Key of the device count in profile summaries ("rings").
    device_noun: str
    #: The process.yaml section holding the spreads of the fabricated devices.
    device_section: str
    #: Folder of this platform's default fleet below the default profiles folder ("" = the folder itself).
    profiles_subdir: str
    #: Name of the additive per-device control error in profiles.
    offset_name: str
    #: Per-device parameters of the transfer function and their units.
    param_units: Mapping[str, str]
    #: Allowed range of each of those parameters (a parameter not listed must be > 0).
    param_ranges: Mapping[str, Range] = {}
    #: Nominal values of those parameters (the digital model used for training).
    nominal: Mapping[str, float]
    #: Range of the trainable controls (inclusive), in ``control_units``.
    control_range: tuple[float, float]
    #: Typical shift of a control per kelvin (control units / K): the common-mode thermal drift.
    nominal_drift: float
    #: Noise-aware training's default noise on every control (control units).
    default_noise: float
    #: True when the controls are periodic (phases): |control| then means nothing (no adaptive SAT).
    periodic: bool = False
    #: Whole-setup perturbations `audit` sweeps beside temperature and ageing (a free-space setup's
    #: misalignment); :meth:`fleet_weights` then takes ``perturbation={axis name: value}``.
    perturbation_axes: tuple[PerturbationAxis, ...] = ()
    #: The dataset `pnndeploy demo` tells the story on (every platform: the embedded digits, or a view of them).
    demo_dataset: str = "digits"

    # ------------------------------------------------------------------------------------------ a layer
    @abstractmethod
    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """Shape of the controls of an (out, in) layer; ``params`` are the model's platform parameters."""

    @abstractmethod
    def init_controls(self, weight_shape: tuple[int, int], generator: Any) -> Any:
        """Initial trainable controls (a torch tensor) of an (out, in) layer."""

    @abstractmethod
    def nominal_weights(self, controls: Any, weight_shape: tuple[int, int]) -> Any:
        """(out, in) weights the nominal device realises at ``controls``; differentiable (torch)."""

    @abstractmethod
    def project(self, controls: Any) -> None:
        """Bring trainable controls (a torch parameter) back to what the hardware can set, in place."""

    @abstractmethod
    def weights_to_controls(self, weight: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """Controls that realise ``weight`` on the nominal device: (controls, clipped, row_scale).

        The nominal device realises ``row_scale[:, None] * nominal_weights(controls)``, the
        closest it can get to ``weight``; ``row_scale`` (>= 1) is folded into the digital gain
        by the caller, and ``clipped`` counts the weights it could not reach.
        """

    def misalign_inputs(self, x: Any, misalignment: Any) -> Any:
        """Torch: a layer's inputs as a misaligned setup shows them (platforms with :attr:`perturbation_axes`)."""
        raise NotImplementedError(f"{self.name} layers have no misalignment")

    def params_dict(self) -> dict[str, float]:
        """Nominal parameters as a plain dict (for metadata)."""
        return {k: float(v) for k, v in self.nominal.items()}

    def metadata(self) -> dict[str, Any]:
        """The platform's parameters as the model file records them (``pnndeploy.platform_params``)."""
        return {**self.params_dict(), "control_units": self.control_units, "control_range": list(self.control_range)}

    # --------------------------------------------------------------------------------------- profiles
    #: The smallest valid layout (the process-spec check dry-runs the fabrication model on it).
    minimal_layout: tuple[int, int] = (1, 1)

    def layout_problem(self, layout: tuple[int, int]) -> str | None:
        """Why a (rows, cols) layout of positive sizes is not a chip of this platform, or None."""
        return None

    def field_shape(self, name: str, layout: tuple[int, int]) -> tuple[int, ...]:
        """Shape of a per-device field (offset, parameters) of a chip with this ``layout``."""
        return tuple(layout)

    def device_shape(self, layout: tuple[int, int]) -> tuple[int, ...]:
        """Shape of per-control-device arrays (drift coefficients, ageing shifts) for this ``layout``."""
        return tuple(layout)

    def device_count(self, layout: tuple[int, int]) -> int:
        """Number of control devices of a chip with this ``layout``."""
        return int(np.prod(self.device_shape(layout)))

    @abstractmethod
    def sample_fabrication(self, spec: Mapping[str, Any], layout: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Draw the truth of one fabricated chip from its process.yaml section.

        Returns ``{offset_name: ..., **param_units keys, "drift_coefficient": ...}``, each of its
        :meth:`field_shape` (drift: :meth:`device_shape`).
        """

    # ---------------------------------------------------------------------------------------- mapping
    @abstractmethod
    def map_layer(self, weight: np.ndarray, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int],
                  params: Mapping[str, Any] | None = None) -> LayerMapping:
        """Settings realising ``weight`` (with the trained ``controls`` as a guide) on one chip.

        Only the chip's ``calibration`` and ``environment`` (heater range, DAC) are used.
        """

    # ------------------------------------------------------------------------------------- simulation
    @abstractmethod
    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray],
                    profiles: Sequence[Any], layout: tuple[int, int]) -> dict[str, np.ndarray]:
        """What does not change between evaluations of one layer on these chips (stacked over chips)."""

    # ----------------------------------------------------------------------------------- calibration
    #: True when a chip of this platform can be calibrated by sweeping its devices one at a time
    #: (:meth:`device_response` and :meth:`fit_response` are implemented).
    sweep_calibration: bool = False

    def device_response(self, truth: Mapping[str, np.ndarray], drift: np.ndarray, rows: np.ndarray,
                        cols: np.ndarray, controls: np.ndarray, delta_T: float) -> np.ndarray:
        """(devices, points) weight device (rows[d], cols[d]) realises at each control, every other device
        at 0 (no crosstalk): what a calibration sweep measures, before measurement noise."""
        raise NotImplementedError(f"calibration by measurement is not implemented for {self.name}")

    def fit_response(self, controls: np.ndarray, measured: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Fit the transfer function to a sweep, (devices, points): per device the calibration fields
        (offset and parameters, each (devices,)) and the rms fit residual (devices,)."""
        raise NotImplementedError(f"calibration by measurement is not implemented for {self.name}")

    @abstractmethod
    def fleet_weights(self, state: dict[str, np.ndarray], chips: slice, delta_T: Any,
                      control_shift: np.ndarray | None) -> np.ndarray:
        """(chips, out, in) float32 weights the chips realise, before detector noise.

        ``delta_T`` is a scalar or one value per chip (K); ``control_shift`` is an extra shift
        of every control device, (chips, *device_shape), e.g. ageing.  A platform with
        :attr:`perturbation_axes` also takes ``perturbation``, a mapping of axis name to value.
        """
