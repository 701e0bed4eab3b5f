"""A diffractive deep neural network (D2NN): two phase masks in free space, read by intensity on ten detectors.

The layer, plane by plane (every length in µm, phases in rad):

1. **Input plane**: the layer's inputs (a P x P frame: 28 x 28 for digits28 and MNIST) are the *amplitude* of a
   coherent field, each input pixel upsampled to u x u mask pixels (u = the largest integer with u P <= 7/8 of
   the grid), in the middle of the ``grid`` x ``grid`` aperture.
2. **Propagation** by the angular spectrum method over ``distance_um`` to the first mask, then to the second,
   then to the detector plane (:func:`~pnndeploy.platforms.optics.angular_spectrum`: band-limited, on a grid
   zero-padded to 2 x grid against the FFT's wrap-around; light beyond a mask's aperture is blocked).
3. **Two phase masks**, ``grid`` x ``grid`` pixels of ``pixel_pitch_um``: pixel (r, c) of mask m multiplies the
   field by t e^{i phi}, phi its phase (the controls: shape (2, grid, grid), rad, periodic) and t its transmission
   (1 nominally; a fabricated pixel loses some).
4. **Detectors**: ``out`` square detectors in rows (3-4-3 for ten classes, as Lin et al. 2018 place them)
   integrate the intensity |E|^2; a digital gain and bias per output follow, as on every platform.

Imperfections (per setup: fabrication truth; calibration: what the lab measured):

* each pixel's **phase error** (etch depth) and **transmission loss**;
* each mask's **rotation** (deg) about its centre and lateral **shift** (px) from where it should sit: the
  setup's misalignment (fields of shape (2,), one value per mask).  After calibration, what a deployed setup
  moves along :data:`MASK_AXES` (the same rotation and shift of both masks) is swept by `audit` and trained for
  by FD-SAT (a real bench cannot differentiate a rotation);
* **thermal phase drift**: a phase plate's optical path changes with temperature, (dn/dT h + (n - 1) alpha h)
  2 pi / lambda: for a 1 µm polymer relief (dn/dT ~ -1e-4 /K) about 1e-3 rad/K per pixel, small beside the
  etch error, modelled so that the temperature axis every platform has means the same thing here;
* detector noise: an additive offset on each detector's power.

Mapping writes each mask as programmed phases (an SLM or a re-written plate): it pre-compensates the measured
phase offsets and the measured misalignment (the trained pattern resampled through the inverse of the
measured rotation and shift, so that the misaligned mask shows the pattern where training put it).

The ONNX graph is standard operators: the 2-D propagation as DFT operators on the padded grid (an N x N field is
never a matrix: a 128 x 128 mask would need a 16384 x 16384 complex one), the masks as complex products.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.errors import ModelFileError
from pnndeploy.platforms.axes import PerturbationAxis, move_along
from pnndeploy.platforms.base import ChipState, Clipping, LayerMapping, PhaseControls, Platform, Range, quantise, \
    stacked
from pnndeploy.platforms.imaging import resample
from pnndeploy.platforms.mesh import TWO_PI
from pnndeploy.platforms.optics import angular_spectrum, intensity
from pnndeploy.platforms.options import PlatformOption
from pnndeploy.threads import each_on_one_thread, one_thread, threads_within_memory

#: Masks of a setup (the paper's two).
MASKS = 2
#: Spatial frequencies (per axis, of the 2 x grid padded grid) the propagation must pass at least: fewer, and the
#: masks can do little more than scale the mean field.
MIN_BAND = 4
#: Each mask's misalignment as profile fields, each of shape (MASKS,): rotation (deg), shift along x and y (px).
MISALIGNMENT_FIELDS = ("rotation", "shift_x", "shift_y")
#: What a deployed setup moves along after calibration: both masks rotate / shift by the same amount.
MASK_AXES = (
    PerturbationAxis("rotation_deg", "mask rotation", "deg", 0.0, "0:1:0.1", 0.5, flag="rotation",
                     differentiable=False, spread_key="rotation_sigma_deg", calibration_key="rotation",
                     help="rotation sweep of both masks, degrees from the calibrated setup"),
    PerturbationAxis("shift_x_px", "mask shift along x", "px", 0.0, "-1:1:0.25", 0.5, flag="shift",
                     differentiable=False, spread_key="shift_sigma_px", calibration_key="shift_x",
                     help="shift sweep of both masks, mask pixels along x and, separately, along y"),
    PerturbationAxis("shift_y_px", "mask shift along y", "px", 0.0, "-1:1:0.25", 0.5, flag="shift",
                     differentiable=False, spread_key="shift_sigma_px", calibration_key="shift_y",
                     help="shift sweep of both masks, mask pixels along x and, separately, along y"),
)


def detector_rows(out: int) -> list[int]:
    """Detectors per row: about sqrt(out) rows, the extra detectors in the middle rows (3-4-3 for ten)."""
    rows = max(1, round(math.sqrt(out)))
    base, extra = divmod(out, rows)
    middle = sorted(range(rows), key=lambda r: (abs(r - (rows - 1) / 2), r))[:extra]
    return [base + (r in middle) for r in range(rows)]


@functools.lru_cache(maxsize=8)
def _transfer(grid: int, pitch_um: float, wavelength_um: float, distance_um: float) -> np.ndarray:
    """H of one distance on the 2 x grid padded grid (kept, read-only: every layer and chip shares it)."""
    H = angular_spectrum(2 * grid, pitch_um, wavelength_um, distance_um)
    H.setflags(write=False)
    return H


@functools.lru_cache(maxsize=8)
def _on_device(key: tuple[Any, ...], device: str, dtype: Any) -> tuple[Any, Any]:
    """(H, detector matrix R) as torch tensors on ``device`` for a geometry ``key`` = (grid, pitch, wavelength,
    distance, side, out): converted once, not at every forward pass (a 512 grid's R is 67 MB)."""
    import torch

    grid, pitch, wavelength, distance, side, out = key
    H = torch.from_numpy(np.array(_transfer(grid, pitch, wavelength, distance))).to(device=device, dtype=dtype)
    R = torch.from_numpy(np.array(_layout(grid, side, out)[2])).to(device=device, dtype=torch.float64 if dtype ==
                                                           torch.complex128 else torch.float32)
    return H, R


@functools.lru_cache(maxsize=8)
def _layout(grid: int, side: int, out: int) -> tuple[int, int, np.ndarray]:
    """(upsampling u, top-left pixel of the input frame, detector matrix R (grid^2, out) of 0/1) for a P = side
    input frame and ``out`` detectors on a grid x grid aperture."""
    u = max(1, (grid * 7 // 8) // side)
    lo = (grid - u * side) // 2
    counts = detector_rows(out)
    region = grid * 7 // 8
    start = (grid - region) // 2
    cell_h, cell_w = region // len(counts), region // max(counts)
    size = max(1, min(cell_h, cell_w) // 2)
    R = np.zeros((grid, grid, out))
    d = 0
    for r, count in enumerate(counts):
        top = start + r * cell_h + (cell_h - size) // 2
        row_start = start + (region - count * cell_w) // 2
        for c in range(count):
            left = row_start + c * cell_w + (cell_w - size) // 2
            R[top:top + size, left:left + size, d] = 1.0
            d += 1
    R = R.reshape(grid * grid, out)
    R.setflags(write=False)
    return u, lo, R


class D2NNPlatform(PhaseControls, Platform):
    """Two phase masks and a detector plane; controls are the masks' phases (rad), shape (2, grid, grid)."""

    name = "d2nn"
    description = "a diffractive network (two phase masks, angular-spectrum propagation, intensity detectors)"
    linear = False
    control_units = "rad"
    control_noun = "phase"
    device_noun = "pixels"
    device_section = "mask"
    profiles_subdir = "d2nn"
    offset_name = "phase_offset"
    param_units = {"transmission": "1", "rotation": "deg", "shift_x": "px", "shift_y": "px"}
    param_ranges = {
        "transmission": Range(0.0, 1.0, lo_inclusive=False, hi_inclusive=True),
        "rotation": Range(-45.0, 45.0, lo_inclusive=True, hi_inclusive=True),
        "shift_x": Range(-math.inf, math.inf, lo_inclusive=False, hi_inclusive=False),
        "shift_y": Range(-math.inf, math.inf, lo_inclusive=False, hi_inclusive=False),
    }
    nominal = {"transmission": 1.0, "rotation": 0.0, "shift_x": 0.0, "shift_y": 0.0}
    control_range = (0.0, TWO_PI)
    #: A 1 µm polymer relief: (dn/dT h) 2 pi / lambda ~ 1e-4 * 1 * 2 pi / 0.532 ~ 1.2e-3 rad/K.
    nominal_drift = 0.0012
    #: noise-aware's default phase noise (rad): the default setups' calibration error of a pixel's phase.
    default_noise = 0.05
    periodic = True
    perturbation_axes = MASK_AXES
    demo_dataset = "digits28"
    #: The Hessian's figures on 128 samples: on 1024 (float64, three 128 x 128 FFT propagations per sample, 130
    #: Hessian-vector products) they took minutes after a 20 s training.
    sharpness_samples = 128
    #: The inputs are the field on the masks: one on-chip layer, 784 inputs -> 10 detectors for digits28.
    default_hidden = ()
    minimal_layout = (16, 16)
    options = (
        PlatformOption("grid", 64, "px", "the side of each mask (and of the input and detector planes)", lo=16,
                       hi=512),
        PlatformOption("pixel_pitch_um", 2.0, "um", "the masks' pixel pitch", lo=0.1, hi=1000.0),
        PlatformOption("wavelength_um", 0.532, "um", "the light's wavelength", lo=0.1, hi=100.0),
        PlatformOption("distance_um", 500.0, "um", "the distance between consecutive planes (input, masks, "
                       "detectors)", lo=0.0, hi=1e6),
    )
    grid, pixel_pitch_um, wavelength_um, distance_um = 64, 2.0, 0.532, 500.0

    # ------------------------------------------------------------------------------------------ a layer
    def layout_problem(self, layout: tuple[int, int]) -> str | None:
        rows, cols = layout
        if rows != cols or rows < 16:
            return "a mask is square, at least 16 x 16 pixels"
        if rows != self.grid:
            return (f"masks of {rows} x {cols} pixels are not grid={self.grid} (a model for them: --platform-option "
                    f"grid={rows}; a process spec or profile that states grid must agree with its layout)")
        return None

    def layout_options(self, layout: tuple[int, int]) -> dict[str, Any]:
        """A setup's masks are its grid: a spec or profile that does not state ``grid`` has rows of pixels."""
        return {"grid": int(layout[0])} if 16 <= int(layout[0]) <= 512 else {}

    def options_problem(self) -> str | None:
        """A geometry whose propagation passes (almost) nothing but the mean field is not a diffractive network:
        the aperture must be wider than a wavelength, and the band limit of the angular spectrum (Matsushima &
        Shimobaba) must pass at least a few spatial frequencies of the padded grid."""
        width = self.grid * self.pixel_pitch_um
        if width <= 4 * self.wavelength_um:
            return (f"an aperture of {self.grid} x {self.pixel_pitch_um:g} um is not wider than 4 wavelengths of "
                    f"{self.wavelength_um:g} um")
        limit = 1.0 / (self.wavelength_um * math.sqrt((self.distance_um / width) ** 2 + 1.0))
        if limit < MIN_BAND / (2 * width):
            return (f"at {self.distance_um:g} um between planes the propagation passes fewer than {MIN_BAND} spatial "
                    f"frequencies of a {self.grid} x {self.pixel_pitch_um:g} um aperture: bring the planes closer "
                    f"(at most {self._farthest():.0f} um) or widen the aperture")
        return None

    def _farthest(self) -> float:
        """The largest distance between planes that passes :data:`MIN_BAND` frequencies."""
        width = self.grid * self.pixel_pitch_um
        ratio = 2 * width / (MIN_BAND * self.wavelength_um)
        return width * math.sqrt(max(ratio ** 2 - 1.0, 0.0))

    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        n = self.grid
        side = math.isqrt(weight_shape[1])
        if side * side != weight_shape[1] or side > n * 7 // 8:
            raise ModelFileError(f"a layer with {weight_shape[1]} inputs is not a square frame within a {n} x {n} "
                                 f"mask's aperture (at most {(n * 7 // 8) ** 2} inputs)")
        if not 1 <= weight_shape[0] <= 64:
            raise ModelFileError(f"a d2nn layer has 1 to 64 detectors, not {weight_shape[0]}")
        return (MASKS, n, n)

    def _operators(self, weight_shape: tuple[int, int], device: Any, dtype: Any) -> tuple[Any, Any]:
        """(H, detector matrix R) of this geometry as torch tensors (never to be changed in place)."""
        key = (self.grid, self.pixel_pitch_um, self.wavelength_um, self.distance_um, math.isqrt(weight_shape[1]),
               weight_shape[0])
        return _on_device(key, str(device), dtype)

    def _input_field(self, x: Any, weight_shape: tuple[int, int], dtype: Any) -> Any:
        """The input plane (..., grid, grid), complex: the frame's amplitudes, upsampled, in the middle."""
        import torch

        n, side = self.grid, math.isqrt(weight_shape[1])
        u, lo, _ = _layout(n, side, weight_shape[0])
        frame = x.reshape(*x.shape[:-1], side, side)
        frame = frame.repeat_interleave(u, dim=-2).repeat_interleave(u, dim=-1)
        field = torch.zeros((*x.shape[:-1], n, n), dtype=dtype, device=x.device)
        field[..., lo:lo + u * side, lo:lo + u * side] = frame.to(dtype)
        return field

    def _propagate(self, field: Any, H: Any) -> Any:
        """The field over one distance: padded onto 2 x grid, propagated, the aperture cut out again."""
        import torch

        n = self.grid
        a = n // 2
        padded = torch.zeros((*field.shape[:-2], 2 * n, 2 * n), dtype=field.dtype, device=field.device)
        padded[..., a:a + n, a:a + n] = field
        return torch.fft.ifft2(torch.fft.fft2(padded) * H)[..., a:a + n, a:a + n]

    def _outputs(self, masks: Any, x: Any, weight_shape: tuple[int, int]) -> Any:
        """Detector powers (..., samples, out) for complex masks (..., 2, grid, grid) and inputs (..., samples, in)."""
        import torch

        dtype = torch.complex128 if masks.dtype == torch.complex128 else torch.complex64
        H, R = self._operators(weight_shape, masks.device, dtype)
        field = self._propagate(self._input_field(x, weight_shape, dtype), H)
        for m in range(MASKS):
            field = self._propagate(field * masks[..., m, None, :, :], H)
        power = intensity(field)
        return power.reshape(*power.shape[:-2], self.grid * self.grid) @ R

    def forward(self, controls: Any, x: Any, weight_shape: tuple[int, int], perturbation: Any = None) -> Any:
        import torch

        masks = torch.polar(torch.ones_like(controls), controls)
        if perturbation is not None:
            moved = perturbation.to(torch.float64)
            masks = torch.stack([misaligned(masks[m], moved[0], moved[1], moved[2]) for m in range(MASKS)])
        return self._outputs(masks, x, weight_shape)

    def onnx_layer(self, name: str, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                   x_name: str, out_name: str, params: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        side = math.isqrt(weight_shape[1])
        u, lo, R = _layout(self.grid, side, weight_shape[0])
        H = _transfer(self.grid, self.pixel_pitch_um, self.wavelength_um, self.distance_um)
        masks = np.exp(1j * np.asarray(controls, np.float64))
        return _onnx_graph(f"{name}.d2nn", x_name, out_name, side, u, lo, H, masks, R)

    # --------------------------------------------------------------------------------------- profiles
    def field_shape(self, name: str, layout: tuple[int, int]) -> tuple[int, ...]:
        return (MASKS,) if name in MISALIGNMENT_FIELDS else (MASKS, *layout)

    def device_shape(self, layout: tuple[int, int]) -> tuple[int, ...]:
        return (MASKS, *layout)

    def sample_fabrication(self, spec: Mapping[str, Any], layout: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per pixel: phase error N(0, s_ph^2) rad, transmission 1 - |N(0, s_t^2)|, drift N(k, (k s_k)^2) rad/K;
        per mask: rotation N(0, s_r^2) deg, shifts N(0, s_s^2) px.  ``spec``: the ``mask`` section."""
        shape = (MASKS, *layout)
        offset = spec["phase_error_sigma_rad"] * rng.standard_normal(shape)
        loss = np.abs(spec["transmission_loss_sigma"] * rng.standard_normal(shape))
        rotation = spec["rotation_sigma_deg"] * rng.standard_normal(MASKS)
        shift = spec["shift_sigma_px"] * rng.standard_normal((2, MASKS))
        drift = spec["drift_rad_per_K"] * (1.0 + spec["drift_rel_sigma"] * rng.standard_normal(shape))
        return {self.offset_name: offset, "transmission": np.clip(1.0 - loss, 1e-3, 1.0),
                "rotation": self.param_ranges["rotation"].clip(rotation), "shift_x": shift[0], "shift_y": shift[1],
                "drift_coefficient": drift}

    # ---------------------------------------------------------------------------------------- a fleet
    def noise_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        return (weight_shape[0],)            # an offset per detector

    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """Each setup's static phases (setting + offset), drift, transmissions and true misalignment per mask."""
        import torch

        dtype = dtype or torch.float32
        static = np.stack([np.asarray(h, np.float64) + p.fabrication[self.offset_name]
                           for h, p in zip(settings, profiles)])
        return {"static": torch.from_numpy(static).to(device=device, dtype=dtype),
                "drift": stacked([p.environment.drift_coefficient for p in profiles], device, dtype),
                "transmission": stacked([p.fabrication["transmission"] for p in profiles], device, dtype),
                "misalignment": torch.from_numpy(np.stack([np.stack([p.fabrication[k] for k in MISALIGNMENT_FIELDS])
                                                           for p in profiles])).to(device),   # (chips, 3, masks)
                "shape": tuple(weight_shape)}

    def fleet_forward(self, state: dict[str, Any], chips: slice, h: Any, conditions: ChipState,
                      noise: Any = None, gain: Any = None) -> Any:
        """One setup at a time, in sample chunks, each on one intra-op thread: a chip's outputs do not depend on the
        chips beside it or on the threads (a thread split would send some pixels of a complex product or a sine
        through a scalar path that rounds otherwise), and a 128 x 128 setup's fields stay within memory.  The
        setups are spread over the compute's threads (:func:`each_on_one_thread`), one setup a piece, as many at
        once as :func:`threads_within_memory` allows for :data:`SETUP_BYTES` each."""
        import torch

        index = range(state["static"].shape[0])[chips]
        dT = conditions.delta_T
        moved = self._moved(state["misalignment"][chips], conditions.perturbation)

        def one_setup(c: int) -> Any:
            chip = index[c]
            phases = state["drift"][chip] * (dT if dT.ndim == 0 else dT[c])
            phases = phases + state["static"][chip]
            if conditions.control_shift is not None:
                phases = phases + conditions.control_shift[c]
            masks = torch.polar(state["transmission"][chip].clone(), phases)            # (2, n, n)
            masks = torch.stack([misaligned(masks[m], *moved[c, :, m]) for m in range(MASKS)])
            x = h.T if h.dim() == 2 else h[c].T
            chunk = max(1, CHUNK_PIXELS // self.grid ** 2)
            return torch.cat([self._outputs(masks, x[k:k + chunk], state["shape"])
                              for k in range(0, x.shape[0], chunk)]).T

        threads = threads_within_memory(torch.get_num_threads(), SETUP_BYTES) if h.device.type == "cpu" else 1
        outs = each_on_one_thread(one_setup, list(range(len(index))), threads)
        y = torch.stack(outs)                                                       # (chips, out, samples)
        if noise is not None:
            y = y + noise[:, :, None]
        return y if gain is None else y * gain[:, None]

    @staticmethod
    def _moved(misalignment: Any, perturbation: Mapping[str, float] | None) -> Any:
        """The true misalignment (chips, 3, masks) moved by an audit's perturbation (the same for both masks)."""
        if not perturbation:
            return misalignment
        import torch

        return torch.stack(move_along(MASK_AXES, list(misalignment.unbind(1)), perturbation), dim=1)

    # ---------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray | None, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Per mask, the phases that make the *calibrated* setup (measured offsets, transmissions, rotation and
        shift) show the trained pattern e^{i phi}: a least-squares fit (L-BFGS) through the calibrated model, from
        the pattern resampled through the inverse of the measured misalignment; less the measured offsets, wrapped
        into the drive's range and quantised; on one thread (the fit's last bits must not depend on the threads).  A sub-pixel shift cannot be undone by resampling alone (it blurs the
        pattern twice), the fit finds the pixels that come closest.  Residual: ||t R(m) e^{i(setting + offset)} -
        e^{i phi}||_F of the calibrated setup over both masks."""
        import torch

        target = torch.from_numpy(np.exp(1j * np.asarray(controls, np.float64)))
        moves = [tuple(torch.tensor(float(np.asarray(calibration[k])[m]), dtype=torch.float64)
                       for k in MISALIGNMENT_FIELDS) for m in range(MASKS)]
        transmission = torch.from_numpy(np.asarray(calibration["transmission"], np.float64))
        offset = np.asarray(calibration[self.offset_name], np.float64)
        start = [misaligned(target[m], *(torch.tensor(v, dtype=torch.float64) for v in
                                         inverse_misalignment(*(float(v) for v in moves[m])))) for m in range(MASKS)]
        phases = torch.from_numpy(np.stack([np.angle(x.numpy()) for x in start])).requires_grad_(True)

        def realised(p: Any) -> Any:
            masks = torch.polar(transmission, p)
            return torch.stack([misaligned(masks[m], *moves[m]) for m in range(MASKS)])

        if any(bool(torch.any(torch.stack(move) != 0)) for move in moves):
            optimiser = torch.optim.LBFGS([phases], max_iter=FIT_ITERATIONS, line_search_fn="strong_wolfe")

            def loss() -> Any:
                optimiser.zero_grad()
                value = intensity(realised(phases) - target).sum()
                value.backward()
                return value

            with one_thread():
                optimiser.step(loss)
        lo, hi = environment.heater_range
        wanted = phases.detach().numpy() - offset
        settings, inside = quantise(lo + np.mod(wanted - lo, TWO_PI), (lo, hi), environment.dac_bits)
        with torch.no_grad(), one_thread():
            got = realised(torch.from_numpy(settings + offset))
        return LayerMapping(settings, Clipping.of(settings.size, inside=inside),
                            float(torch.linalg.vector_norm(got - target)))


#: Iterations of the least-squares fit of a mask's phases through the calibrated setup in mapping.
FIT_ITERATIONS = 100
#: Samples x grid^2 per propagation in fleet evaluation: a chunk's padded fields (samples x 4 grid^2 complex64)
#: stay near 32 MiB each whatever the grid (256 samples at 64 x 64, 4 at 512 x 512).
CHUNK_PIXELS = 1 << 20
#: What one setup's evaluation holds at once (a few of its chunk's padded fields, each ~32 MiB): within
#: :data:`pnndeploy.threads.PIECES_BYTES`, at most 16 setups side by side, whatever the cores.
SETUP_BYTES = 4 * 4 * CHUNK_PIXELS * 8


def misaligned(mask: Any, rotation_deg: Any, shift_x: Any, shift_y: Any) -> Any:
    """A complex mask (n, n) as it sits rotated by ``rotation_deg`` about its centre and shifted (px): pixel p of
    the plane shows the mask at ``Rot(-theta)(p - c - t) + c``, read bilinearly in its real and imaginary parts
    (beyond the mask's edge: no light).  Torch scalars; exact (a copy) at zero."""
    import torch

    values = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in (rotation_deg, shift_x, shift_y)])
    if not bool(torch.any(values != 0)):
        return mask
    n = mask.shape[-1]
    params = torch.cat([values, values.new_ones(1)])
    parts = torch.stack([mask.real, mask.imag]).reshape(2, n * n)
    moved = resample(parts, (n, n), params).reshape(2, n, n)
    return torch.complex(moved[0], moved[1])


def _onnx_graph(p: str, x_name: str, out_name: str, side: int, u: int, lo: int, H: np.ndarray, masks: np.ndarray,
                R: np.ndarray) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers of the layer: the frame upsampled (Expand) and padded onto the aperture as a
    complex field (..., 2), then per plane: pad to 2 x grid, propagate (:func:`onnx_propagate`: DFT), cut the
    aperture (Slice), times the mask; intensity, then the detectors' sums (a MatMul with the 0/1 matrix R)."""
    from onnx import helper, numpy_helper

    from pnndeploy.platforms.optics import onnx_complex_multiply, onnx_propagate

    n, a = masks.shape[-1], masks.shape[-1] // 2
    ints = lambda v, key: numpy_helper.from_array(np.asarray(v, dtype=np.int64), f"{p}.{key}")  # noqa: E731
    hi = n - lo - u * side
    nodes = [helper.make_node("Reshape", [x_name, f"{p}.frame_shape"], [f"{p}.frame"], name=f"{p}.frame"),
             helper.make_node("Expand", [f"{p}.frame", f"{p}.up_shape"], [f"{p}.up5"], name=f"{p}.upsample"),
             helper.make_node("Reshape", [f"{p}.up5", f"{p}.up_flat"], [f"{p}.up"], name=f"{p}.up"),
             helper.make_node("Unsqueeze", [f"{p}.up", f"{p}.last"], [f"{p}.up1"], name=f"{p}.real"),
             helper.make_node("Pad", [f"{p}.up1", f"{p}.aperture_pads"], [f"{p}.plane0"], name=f"{p}.aperture")]
    inits = [ints([-1, side, 1, side, 1], "frame_shape"), ints([1, side, u, side, u], "up_shape"),
             ints([-1, u * side, u * side], "up_flat"), ints([-1], "last"),
             ints([0, lo, lo, 0, 0, hi, hi, 1], "aperture_pads"), ints([0, a, a, 0, 0, a, a, 0], "grid_pads"),
             ints([a, a], "starts"), ints([a + n, a + n], "ends"), ints([1, 2], "axes"),
             ints([-1, n * n], "flat_shape"), numpy_helper.from_array(R.astype(np.float32), f"{p}.detectors")]
    field = f"{p}.plane0"
    for k in range(masks.shape[0] + 1):
        step = f"{p}.prop{k}"
        nodes.append(helper.make_node("Pad", [field, f"{p}.grid_pads"], [f"{step}.padded"], name=f"{step}.pad"))
        prop_nodes, prop_inits = onnx_propagate(step, f"{step}.padded", H, f"{step}.out", constants=f"{p}.H")
        nodes += prop_nodes + [helper.make_node("Slice", [f"{step}.out", f"{p}.starts", f"{p}.ends", f"{p}.axes"],
                                                [f"{step}.cut"], name=f"{step}.cut")]
        inits += prop_inits
        field = f"{step}.cut"
        if k < masks.shape[0]:
            mul_nodes, mul_inits = onnx_complex_multiply(f"{p}.mask{k}", field, masks[k], f"{p}.masked{k}")
            nodes, inits, field = nodes + mul_nodes, inits + mul_inits, f"{p}.masked{k}"
    nodes += [helper.make_node("Mul", [field, field], [f"{p}.sq"], name=f"{p}.sq"),
              helper.make_node("ReduceSum", [f"{p}.sq", f"{p}.last"], [f"{p}.power"], keepdims=0, name=f"{p}.power"),
              helper.make_node("Reshape", [f"{p}.power", f"{p}.flat_shape"], [f"{p}.flat"], name=f"{p}.flat"),
              helper.make_node("MatMul", [f"{p}.flat", f"{p}.detectors"], [out_name], name=f"{p}.detectors")]
    return nodes, list({tensor.name: tensor for tensor in inits}.values())      # H once for the three planes


def inverse_misalignment(rotation_deg: float, shift_x: float, shift_y: float) -> tuple[float, float, float]:
    """The misalignment that undoes (rotation, shift): a pattern resampled through it and then through the
    original shows the pattern again (up to interpolation): rotation -theta, shift -Rot(-theta) t."""
    theta = math.radians(rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    return -rotation_deg, -(cos * shift_x + sin * shift_y), -(-sin * shift_x + cos * shift_y)


__all__ = ["D2NNPlatform", "MASK_AXES", "MASKS", "MISALIGNMENT_FIELDS", "detector_rows", "inverse_misalignment",
           "misaligned"]
