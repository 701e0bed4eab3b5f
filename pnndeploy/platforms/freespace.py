"""Free-space optics: weight masks imaged onto the input frame, whose imperfections are misalignments.

A layer with ``n`` inputs shows them as a 2-D frame (:func:`~pnndeploy.platforms.imaging.frame_shape`:
8 x 8 for digits, 28 x 28 for MNIST-sized inputs) on a display; relay optics image the frame onto the
masks of the outputs, one mask per output, and a detector behind each mask sums the transmitted light.
Output o therefore computes ``sum_p W[o, p] x_mask[p]``.

* **Signed weights** come from a differential pair of masks (two pixels per weight, detected
  balanced): ``W = g+ t+ - g- t-`` with transmissions ``t = clip(control, 0, 1)`` and per-pixel gains g.
  Controls are the transmissions, shape (2, out, in); the nominal pair is balanced about 0.5, so a
  common-mode change of both pixels (thermal drift of a liquid-crystal mask) cancels to first order.
* **The setup's imaging**: a misaligned relay (rotation in degrees about the frame centre, a shift in
  mask pixels, a magnification) resamples the frame bilinearly (:mod:`~pnndeploy.platforms.imaging`),
  and optical crosstalk blurs it: each pixel keeps 1 - c of its light and spills c/4 into each
  neighbour (the profile's ``crosstalk``).  A setup realises ``W_eff = W @ K @ B(misalignment)``.
  One relay serves every layer of the model, so every layer sees the setup's misalignment.
* **Per setup (fabrication truth)**: every mask pixel's transmission offset and gain, the
  misalignment (rotation, shift_x, shift_y, scale: one value each, fields of shape (1,)), the
  thermal drift of each pixel; **calibration** holds the measured ones.  Mapping pre-compensates the
  measured misalignment and blur (a box-constrained least-squares inverse of the imaging), so what remains on a
  setup is the error of that measurement and what moves after it: :data:`MISALIGNMENT_AXES` are what
  `pnndeploy audit` sweeps beside temperature.

A layer larger than the mask array reuses it (weight (o, i) on pixel (o mod R, i mod C) of each mask
of the pair, reprogrammed per tile), as the ring bank does.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.platforms.axes import PerturbationAxis, move_along
from pnndeploy.platforms.base import ChipState, Clipping, LayerMapping, LinearPlatform, Range, quantise, stacked
from pnndeploy.platforms.imaging import Misalignment, frame_shape, imaging_operator, is_identity, resample
from pnndeploy.platforms.tiling import ring_index

#: The setup's misalignment as profile fields (each of shape (1,)), in the order of :class:`Misalignment`.
MISALIGNMENT_FIELDS = ("rotation", "shift_x", "shift_y", "scale")
#: Iterations of the box-constrained least squares that pre-compensates the measured imaging in mapping.
INVERSE_ITERATIONS = 300
#: What `audit` sweeps for a setup after calibration, beside temperature and ageing: its misalignment, which
#: training cannot differentiate on a real bench (FD-SAT).  The default requirement is the paper's test box
#: (2 deg, 2 px, x1.1); spec-SAT's box is read off the process spec (the setups' spread and calibration error).
MISALIGNMENT_AXES = (
    PerturbationAxis("rotation_deg", "rotation", "deg", 0.0, "-4:4:0.5", 2.0, flag="rotation", differentiable=False,
                     spread_key="rotation_sigma_deg", calibration_key="rotation",
                     help="rotation sweep, degrees from the calibrated setup"),
    PerturbationAxis("shift_x_px", "shift along x", "px", 0.0, "-4:4:0.5", 2.0, flag="shift", differentiable=False,
                     spread_key="shift_sigma_px", calibration_key="shift_x",
                     help="shift sweep, mask pixels along x and, separately, along y"),
    PerturbationAxis("shift_y_px", "shift along y", "px", 0.0, "-4:4:0.5", 2.0, flag="shift", differentiable=False,
                     spread_key="shift_sigma_px", calibration_key="shift_y",
                     help="shift sweep, mask pixels along x and, separately, along y"),
    PerturbationAxis("scale", "magnification", "1", 1.0, "0.8:1.2:0.025", 0.1, flag="scale", differentiable=False,
                     compose="multiply", spread_key="scale_sigma", calibration_key="scale",
                     help="magnification sweep, relative to the calibrated setup"),
)


def misalignment_of(fields: Mapping[str, np.ndarray]) -> Misalignment:
    """The misalignment a calibration or fabrication record holds."""
    return Misalignment(*(float(np.asarray(fields[k]).reshape(-1)[0]) for k in MISALIGNMENT_FIELDS))


def perturbed(base: Misalignment, perturbation: Mapping[str, float] | None) -> Misalignment:
    """``base`` moved by an audit's perturbation, each axis as it composes (rotation and shifts add, the
    magnification multiplies)."""
    if not perturbation:
        return base
    return Misalignment(*move_along(MISALIGNMENT_AXES, [float(v) for v in base.as_array()], perturbation))


class FreeSpacePlatform(LinearPlatform):
    """Differential-pair transmission masks behind a relay; controls are transmissions (T), 2 per weight."""

    name = "freespace"
    description = "a free-space setup (differential transmission masks imaged onto the input frame)"
    control_units = "T"
    control_noun = "transmission"
    device_noun = "pixels"
    device_section = "mask"
    profiles_subdir = "freespace"
    offset_name = "transmission_offset"
    param_units = {"pixel_gain": "1", "rotation": "deg", "shift_x": "px", "shift_y": "px", "scale": "1"}
    param_ranges = {
        "pixel_gain": Range(0.0, 2.0, lo_inclusive=False, hi_inclusive=True),
        "rotation": Range(-45.0, 45.0, lo_inclusive=True, hi_inclusive=True),
        "shift_x": Range(-math.inf, math.inf, lo_inclusive=False, hi_inclusive=False),
        "shift_y": Range(-math.inf, math.inf, lo_inclusive=False, hi_inclusive=False),
        "scale": Range(0.5, 2.0, lo_inclusive=True, hi_inclusive=True),
    }
    nominal = {"pixel_gain": 1.0, "rotation": 0.0, "shift_x": 0.0, "shift_y": 0.0, "scale": 1.0}
    #: Transmissions training may use: 0.05 of the drive's range [0, 1] is left at each end, so the mapping
    #: can correct a pixel's offset and gain and pre-compensate the imaging without clipping.
    control_range = (0.05, 0.95)
    #: The largest |W| a pair in the training range makes, 0.95 - 0.05 (written out: the difference rounds below).
    reach = 0.9
    #: Transmission change of a liquid-crystal mask pixel per kelvin (T/K), common to both masks of a pair.
    nominal_drift = 0.002
    #: noise-aware's default transmission noise: the default setups' calibration error of a pixel.
    default_noise = 0.01
    #: Pixel pitch of the default masks (µm), recorded in the model's platform parameters: a shift of k px is
    #: k times this on the bench (:meth:`Misalignment.from_um` converts back).
    pixel_pitch_um = 8.0
    perturbation_axes = MISALIGNMENT_AXES
    #: The demo shows the embedded digits at 28 x 28 (``digits28``): the frame size of the paper's experiment, on
    #: which its 2 px test shift means what it meant there (on the 8 x 8 originals 2 px is a quarter of the frame).
    demo_dataset = "digits28"

    # ---------------------------------------------------------------------------------------- a layer
    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        return (2, *weight_shape)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "pixel_pitch_um": self.pixel_pitch_um,
                "encoding": "differential pair, W = t+ - t-", "frame": "squarest rows x cols of the inputs"}

    def init_controls(self, weight_shape: tuple[int, int], generator: Any) -> Any:
        """A balanced pair 0.5 +- w/2 with w ~ U(-0.9, 0.9): both pixels inside the training range, free to move."""
        import torch

        w = torch.rand(weight_shape, generator=generator) * 1.8 - 0.9
        return torch.stack([0.5 + w / 2, 0.5 - w / 2])

    def nominal_weights(self, controls: Any, weight_shape: tuple[int, int]) -> Any:
        return controls[0] - controls[1]

    def project(self, controls: Any) -> None:
        """Transmissions stay in the training range."""
        import torch

        with torch.no_grad():
            controls.clamp_(*self.control_range)

    def weights_to_controls(self, weight: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """The balanced pair 0.5 +- W/2 inside the training range: a row whose largest |W| exceeds the range's
        reach (0.9) is divided by that ratio and the digital gain multiplied by it, which changes no output."""
        w = np.asarray(weight, np.float64)
        reach = self.reach
        peak = np.abs(w).max(axis=1) if w.size else np.zeros(w.shape[0])
        scale = np.maximum(1.0, peak / reach)
        w = np.clip(w / scale[:, None], -reach, reach)
        return np.stack([0.5 + w / 2, 0.5 - w / 2]), 0, scale

    def perturb_inputs(self, x: Any, misalignment: Any) -> Any:
        """Torch: a batch of a layer's inputs (batch, n) as a relay with ``misalignment`` (rotation_deg,
        shift_x_px, shift_y_px, scale: a tensor) shows them on the masks; what training perturbs."""
        return resample(x, frame_shape(x.shape[1]), misalignment)

    # --------------------------------------------------------------------------------------- profiles
    def field_shape(self, name: str, layout: tuple[int, int]) -> tuple[int, ...]:
        return (1,) if name in MISALIGNMENT_FIELDS else (2, *layout)

    def device_shape(self, layout: tuple[int, int]) -> tuple[int, ...]:
        return (2, *layout)

    def sample_fabrication(self, spec: Mapping[str, Any], layout: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Pixel offsets N(0, s_t^2), gains 1 + N(0, s_g^2); misalignment: rotation N(0, s_r^2) deg, shifts
        N(0, s_s^2) px, scale 1 + N(0, s_m^2); drift N(k, (k s_k)^2) per pixel.  ``spec``: the ``mask`` section."""
        shape = (2, *layout)
        offset = spec["transmission_offset_sigma"] * rng.standard_normal(shape)
        gain = 1.0 + spec["pixel_gain_sigma"] * rng.standard_normal(shape)
        rotation = spec["rotation_sigma_deg"] * rng.standard_normal(1)
        shift = spec["shift_sigma_px"] * rng.standard_normal(2)
        scale = 1.0 + spec["scale_sigma"] * rng.standard_normal(1)
        drift = spec["drift_T_per_K"] * (1.0 + spec["drift_rel_sigma"] * rng.standard_normal(shape))
        return {
            self.offset_name: offset,
            "pixel_gain": self.param_ranges["pixel_gain"].clip(gain),
            "rotation": self.param_ranges["rotation"].clip(rotation),
            "shift_x": shift[:1], "shift_y": shift[1:],
            "scale": self.param_ranges["scale"].clip(scale),
            "drift_coefficient": drift,
        }

    # ---------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Pre-compensate the *measured* imaging, then set each pixel of the pair through its measured gain and
        offset: ``W_set = argmin ||W_set M - W||^2`` over |W_set| <= 0.9, M the calibrated K B, then
        ``t+- = (0.5 +- W_set/2) / g+- - offset+-``, quantised; transmissions outside [0, 1] are clipped and
        counted.  The residual is the calibrated model's ``||W_realised M - W||_F``."""
        target = weight.astype(np.float64)
        M = imaging_operator(frame_shape(weight.shape[1]), misalignment_of(calibration), float(environment.crosstalk))
        w_set = target if is_identity(M) else _inverse_imaging(target, M, self.reach)
        ri, ci = ring_index(weight.shape, layout)
        gain = calibration["pixel_gain"][:, ri, ci]
        offset = calibration[self.offset_name][:, ri, ci]
        pair = np.stack([0.5 + w_set / 2, 0.5 - w_set / 2])
        settings, inside = quantise(pair / gain - offset, environment.heater_range, environment.dac_bits)
        t = gain * np.clip(settings + offset, 0.0, 1.0)
        residual = float(np.linalg.norm(_times(t[0] - t[1], M) - target))
        return LayerMapping(settings, Clipping.of(settings.size, inside=inside), residual)

    # ------------------------------------------------------------------------------------- simulation
    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """Static transmission control (setting + offset) of every pixel, the gathered gains and drifts, and each
        setup's true misalignment and crosstalk."""
        import torch

        dtype = dtype or torch.float32
        ri, ci = ring_index(weight_shape, layout)
        # setting + offset in float64 before the cast, as the setup adds them in the light, not in float32
        static = np.stack([np.asarray(h, np.float64) + p.fabrication[self.offset_name][:, ri, ci]
                           for h, p in zip(settings, profiles)])
        return {
            "ri": torch.tensor(ri, device=device), "ci": torch.tensor(ci, device=device),    # read-only: copies
            "static": torch.from_numpy(static).to(device=device, dtype=dtype),
            "gain": stacked([p.fabrication["pixel_gain"][:, ri, ci] for p in profiles], device, dtype),
            "drift": stacked([p.environment.drift_coefficient[:, ri, ci] for p in profiles], device, dtype),
            "misalignment": [misalignment_of(p.fabrication) for p in profiles],
            "crosstalk": [float(p.environment.crosstalk) for p in profiles],
            "imaging": {},        # each setup's own M^T, built on first use (no perturbation)
        }

    def fleet_weights(self, state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """t = g clip(static + k dT (+ shift), 0, 1); W = t+ - t-; W_eff = W @ K @ B(true misalignment, moved by
        the perturbation), one setup at a time (each has its own sparse imaging)."""
        import torch

        x = state["drift"][chips] * conditions.temperature(3)
        x += state["static"][chips]
        if conditions.control_shift is not None:
            x += conditions.control_shift[:, :, state["ri"], state["ci"]]
        x.clamp_(0.0, 1.0)
        x *= state["gain"][chips]
        W = x[:, 0] - x[:, 1]                                   # (chips, out, in)
        frame = frame_shape(W.shape[2])
        out = torch.empty_like(W)
        perturbation = conditions.perturbation
        for c, chip in enumerate(range(len(state["crosstalk"]))[chips]):
            MT = state["imaging"].get(chip) if not perturbation else None
            if MT is None:
                M = imaging_operator(frame, perturbed(state["misalignment"][chip], perturbation),
                                     state["crosstalk"][chip], dtype=W.dtype, device=W.device)
                MT = M.t().coalesce()
                if not perturbation:
                    state["imaging"][chip] = MT
            out[c] = torch.sparse.mm(MT, W[c].T).T              # W @ M with M sparse
        return out


def _times(w: np.ndarray, M: Any) -> np.ndarray:
    """``w @ M`` for a dense float64 numpy ``w`` and a sparse torch ``M``."""
    import torch

    return torch.sparse.mm(M.t(), torch.from_numpy(np.ascontiguousarray(w.T))).T.numpy()


def _inverse_imaging(target: np.ndarray, M: Any, reach: float) -> np.ndarray:
    """Masks W_set in [-reach, reach] minimising ||W_set M - target||_F: box-constrained least squares by
    accelerated projected gradient (FISTA), from the target itself, so it never does worse than no
    pre-compensation.  A fractional shift or a blur is a low-pass filter: an exact inverse would ask more
    of a transmission than it can give at the mask's finest detail, so the box, not a ridge, keeps it real."""
    import torch

    values = M.values().abs()
    rows, cols = M.indices()
    n = M.shape[0]
    # ||M||_2^2 <= ||M||_1 ||M||_inf bounds the gradient's Lipschitz constant
    col_sums = torch.zeros(n, dtype=values.dtype).index_add_(0, cols, values)
    row_sums = torch.zeros(n, dtype=values.dtype).index_add_(0, rows, values)
    lipschitz = float(col_sums.max() * row_sums.max()) or 1.0
    MT = M.t().coalesce()
    goal = torch.from_numpy(np.ascontiguousarray(target.T))             # work on transposes: (n, out)

    def misfit(w: Any) -> float:
        return float(torch.sum((torch.sparse.mm(MT, w) - goal) ** 2))

    x = goal.clamp(-reach, reach)
    best, best_misfit = x, misfit(x)                    # FISTA is not monotone: keep the best iterate seen
    y, t = x.clone(), 1.0
    for _ in range(INVERSE_ITERATIONS):
        grad = torch.sparse.mm(M, torch.sparse.mm(MT, y) - goal)        # ((y M - target) M^T)^T
        x_next = (y - grad / lipschitz).clamp(-reach, reach)
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x_next + ((t - 1.0) / t_next) * (x_next - x)
        x, t = x_next, t_next
        value = misfit(x)
        if value < best_misfit:
            best, best_misfit = x, value
    return best.T.numpy()


__all__ = ["FreeSpacePlatform", "MISALIGNMENT_AXES", "MISALIGNMENT_FIELDS", "misalignment_of", "perturbed"]
