"""Two platforms whose on-chip layer is not a weight matrix, written against the optical-layer interface only.

They exist to hold the interface to its promise (``tests/test_platform_conformance.py`` runs them through
every check a shipped platform passes): a non-linear readout and an operator never materialised as a matrix
plug in as one module each, with a process spec, and nothing else in pnndeploy changes.

* :class:`IntensityMesh`: one N-mode Clements mesh read by **intensity detection**, ``y = |U x|^2`` at the
  first ``out`` ports (the MZI as the paper's authors built it, on a small mesh).  Its chips are MZI meshes,
  so it shares the MZI platform's devices, profiles, fabrication model and calibration fields (``MeshDevices``).
* :class:`Diffractive`: one phase mask on an N x N grid, **free-space propagation** to a detector plane by
  the angular spectrum method (FFT, zero-padded, band-limited) and **intensity** integrated over square
  detector regions: a one-mask diffractive layer (the fourth platform's physics, on a toy grid).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.errors import ModelFileError
from pnndeploy.platforms.base import ChipState, LayerMapping, Platform, Range, quantise, stacked
from pnndeploy.platforms.mesh import TWO_PI, mesh_unitary, one_thread, phase_count
from pnndeploy.platforms.mzi import MeshDevices, _precompensate, _spill
from pnndeploy.platforms.optics import angular_spectrum, intensity, onnx_intensity_of_linear, onnx_propagate, propagate


class IntensityMesh(MeshDevices, Platform):
    """One N-mode mesh read by intensity: a layer (out, in) with in, out <= N computes |U[:out, :in] x|^2."""

    name = "mzi-intensity"
    description = "a Mach-Zehnder (Clements) mesh read by intensity detection"
    linear = False
    modes = 6
    minimal_layout = (2, 2)

    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        n = self._modes(params)
        if weight_shape[0] > n or weight_shape[1] > n:
            raise ModelFileError(f"a {weight_shape[0]}x{weight_shape[1]} layer does not fit one {n}-mode mesh")
        return (phase_count(n),)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "modes": self.modes, "detection": "intensity |U x|^2 at the first out ports"}

    def init_controls(self, weight_shape: tuple[int, int], generator: Any) -> Any:
        import torch

        shape = self.control_shape(weight_shape)
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * TWO_PI).to(torch.float32)

    def _field_matrix(self, controls: Any, weight_shape: tuple[int, int], ratios: Any = None,
                      aligned: bool = False) -> Any:
        """U[..., :out, :in] of the mesh at ``controls`` (complex torch)."""
        n = math.isqrt(controls.shape[-1])
        return mesh_unitary(controls, n, ratios, aligned)[..., :weight_shape[0], :weight_shape[1]]

    def forward(self, controls: Any, x: Any, weight_shape: tuple[int, int], perturbation: Any = None) -> Any:
        U = self._field_matrix(controls, weight_shape)
        return intensity(x.to(U.dtype) @ U.T)

    def onnx_layer(self, name: str, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                   x_name: str, out_name: str, params: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        import torch

        U = self._field_matrix(torch.from_numpy(np.asarray(controls, np.float64)), weight_shape).numpy()
        return onnx_intensity_of_linear(name, U, x_name, out_name)

    def nominal_outputs(self, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                        x: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
        import torch

        c = torch.from_numpy(np.asarray(controls, np.float64))
        return self.forward(c, torch.from_numpy(np.asarray(x, np.float64)), weight_shape).numpy()

    # ---------------------------------------------------------------------------------------- a fleet
    def noise_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        return (weight_shape[0],)        # a detector offset per output port

    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        import torch

        dtype = dtype or torch.float32
        n = layout[0]
        h = stacked(settings, device, dtype)                                    # (chips, n^2)
        crosstalk = stacked([p.environment.crosstalk for p in profiles], device, dtype)[:, None]
        offset = stacked([p.fabrication[self.offset_name] for p in profiles], device, dtype)
        return {"static": h + offset + crosstalk * _spill(h, n),
                "drift": stacked([p.environment.drift_coefficient for p in profiles], device, dtype),
                "ratios": stacked([p.fabrication["splitter_ratio"] for p in profiles], device, dtype),
                "shape": tuple(weight_shape)}

    def fleet_forward(self, state: dict[str, Any], chips: slice, h: Any, conditions: ChipState,
                      noise: Any = None, gain: Any = None) -> Any:
        import torch

        phases = state["static"][chips] + state["drift"][chips] * conditions.temperature(1)
        if conditions.control_shift is not None:
            phases = phases + conditions.control_shift
        with one_thread():          # a chip's mesh the same bits in any batch (see mesh_unitary)
            U = self._field_matrix(phases, state["shape"], state["ratios"][chips], aligned=True)  # (chips, out, in)
        h = h.expand(U.shape[0], *h.shape) if h.dim() == 2 else h
        # the real inputs' field, as two real GEMMs per chip (a chip's bits then do not depend on its batch)
        y = torch.bmm(U.real.contiguous(), h) ** 2 + torch.bmm(U.imag.contiguous(), h) ** 2
        if noise is not None:
            y = y + noise[:, :, None]
        return y if gain is None else y * gain[:, None]

    # ---------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray | None, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Fit the phases of the *calibrated* mesh (measured ratios) to the trained field matrix U[:out, :in],
        subtract the measured offsets, pre-compensate the crosstalk, quantise; residual ||U_cal - U||_F."""
        import torch

        n = layout[0]
        shape = tuple(weight_shape)
        ratios = torch.from_numpy(np.asarray(calibration["splitter_ratio"], np.float64))
        target = self._field_matrix(torch.from_numpy(np.asarray(controls, np.float64)), shape)
        phases = torch.from_numpy(np.asarray(controls, np.float64)).clone().requires_grad_(True)
        optimiser = torch.optim.LBFGS([phases], max_iter=150, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

        def loss() -> Any:
            optimiser.zero_grad()
            value = intensity(self._field_matrix(phases, shape, ratios) - target).sum()
            value.backward()
            return value

        optimiser.step(loss)
        offset = calibration[self.offset_name]
        lo, hi = environment.heater_range
        wanted, unmet = _precompensate(phases.detach().numpy() - offset, float(environment.crosstalk), n, lo, hi)
        settings, inside = quantise(wanted, (lo, hi), environment.dac_bits)
        got = torch.from_numpy(settings + offset + float(environment.crosstalk) * _spill(settings, n))
        residual = float(intensity(self._field_matrix(got, shape, ratios) - target).sum().sqrt())
        return LayerMapping(settings, int((unmet | ~inside).sum()), residual)


class Diffractive(Platform):
    """One phase mask (N x N pixels, rad), propagation by the angular spectrum method, intensity on detectors.

    A layer (out, in) shows its ``in`` = P^2 inputs as a P x P amplitude frame in the middle of the mask, the
    mask adds its phase (and a pixel's transmission loss), the light travels :attr:`distance_um` to the detector
    plane (zero-padded to 2N x 2N against wrap-around) and ``out`` square detectors integrate its power.
    """

    name = "d2nn-toy"
    description = "a one-mask diffractive layer (phase mask, angular-spectrum propagation, detectors)"
    control_units = "rad"
    control_noun = "phase"
    device_noun = "pixels"
    device_section = "mask"
    profiles_subdir = "d2nn-toy"
    offset_name = "phase_offset"
    param_units = {"transmission": "1"}
    param_ranges = {"transmission": Range(0.0, 1.0, lo_inclusive=False, hi_inclusive=True)}
    nominal = {"transmission": 1.0}
    control_range = (0.0, TWO_PI)
    nominal_drift = 0.01
    default_noise = 0.05
    periodic = True
    linear = False
    grid = 8
    pixel_pitch_um, wavelength_um, distance_um = 8.0, 0.532, 300.0
    minimal_layout = (4, 4)

    # ------------------------------------------------------------------------------------------ a layer
    def layout_problem(self, layout: tuple[int, int]) -> str | None:
        return None if layout[0] == layout[1] and layout[0] >= 4 else "a mask is square, at least 4 x 4 pixels"

    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        n = (params or {}).get("grid", self.grid)
        if isinstance(n, bool) or not isinstance(n, int) or not 4 <= n <= 256:
            raise ModelFileError(f"model metadata platform_params.grid is {n!r}, expected the mask's side the model "
                                 "was trained for (an integer from 4 to 256); re-export the model")
        side = math.isqrt(weight_shape[1])
        if side * side != weight_shape[1] or side > n or weight_shape[0] > self._capacity(n):
            raise ModelFileError(f"a {weight_shape[0]}x{weight_shape[1]} layer does not fit a {n}x{n} mask")
        return (n, n)

    @staticmethod
    def _capacity(n: int) -> int:
        return (n // 2) ** 2

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "grid": self.grid, "pixel_pitch_um": self.pixel_pitch_um,
                "wavelength_um": self.wavelength_um, "distance_um": self.distance_um}

    def init_controls(self, weight_shape: tuple[int, int], generator: Any) -> Any:
        import torch

        shape = self.control_shape(weight_shape)
        return (torch.rand(shape, generator=generator, dtype=torch.float64) * TWO_PI).to(torch.float32)

    def project(self, controls: Any) -> None:
        import torch

        with torch.no_grad():
            controls.remainder_(TWO_PI)

    @functools.lru_cache(maxsize=8)
    def _operators(self, n: int, weight_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(H on the 2n x 2n grid, the detector matrix R (4n^2, out): 1 where a pixel lies in a detector), kept."""
        H = angular_spectrum(2 * n, self.pixel_pitch_um, self.wavelength_um, self.distance_um)
        k = math.ceil(math.sqrt(weight_shape[0]))
        R = np.zeros((2 * n, 2 * n, weight_shape[0]))
        step = n // k
        for d in range(weight_shape[0]):
            r, c = divmod(d, k)
            top, left = n // 2 + r * step, n // 2 + c * step
            R[top:top + max(1, step // 2), left:left + max(1, step // 2), d] = 1.0
        return H, R.reshape(4 * n * n, weight_shape[0])

    def _outputs(self, mask: Any, x: Any, weight_shape: tuple[int, int]) -> Any:
        """Detector powers (..., samples, out) for a complex mask (..., n, n) and real inputs (..., samples, in)."""
        import torch

        n = mask.shape[-1]
        side = math.isqrt(weight_shape[1])
        H, R = (torch.from_numpy(a).to(mask.device) for a in self._operators(n, weight_shape))
        frame = torch.zeros((*x.shape[:-1], 2 * n, 2 * n), dtype=mask.dtype, device=mask.device)
        lo = n // 2 + (n - side) // 2
        frame[..., lo:lo + side, lo:lo + side] = x.reshape(*x.shape[:-1], side, side).to(mask.dtype)
        frame[..., n // 2:n // 2 + n, n // 2:n // 2 + n] *= mask[..., None, :, :]
        power = intensity(propagate(frame, H.to(mask.dtype)))
        return power.reshape(*power.shape[:-2], 4 * n * n) @ R.to(power.dtype)

    def forward(self, controls: Any, x: Any, weight_shape: tuple[int, int], perturbation: Any = None) -> Any:
        import torch

        return self._outputs(torch.polar(torch.ones_like(controls), controls), x, weight_shape)

    def nominal_outputs(self, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                        x: np.ndarray, params: Mapping[str, Any] | None = None) -> np.ndarray:
        import torch

        c = torch.from_numpy(np.asarray(controls, np.float64))
        return self.forward(c, torch.from_numpy(np.asarray(x, np.float64)), weight_shape).numpy()

    def onnx_layer(self, name: str, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                   x_name: str, out_name: str, params: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        """Reshape the inputs into a frame, pad it onto the 2n x 2n grid, times the mask, propagate (DFT),
        intensity, then the detectors' sums (a MatMul with the 0/1 detector matrix)."""
        from onnx import helper, numpy_helper

        n = controls.shape[-1]
        shape = tuple(weight_shape)
        side = math.isqrt(shape[1])
        H, R = self._operators(n, shape)
        lo = n // 2 + (n - side) // 2
        mask = np.ones((2 * n, 2 * n), dtype=np.complex128)
        mask[n // 2:n // 2 + n, n // 2:n // 2 + n] = np.exp(1j * np.asarray(controls, np.float64))
        p = f"{name}.d2nn"
        ints = lambda v, key: numpy_helper.from_array(np.asarray(v, dtype=np.int64), f"{p}.{key}")  # noqa: E731
        nodes = [helper.make_node("Reshape", [x_name, f"{p}.frame_shape"], [f"{p}.frame"], name=f"{p}.frame"),
                 helper.make_node("Pad", [f"{p}.frame", f"{p}.pads"], [f"{p}.grid"], name=f"{p}.pad"),
                 helper.make_node("Unsqueeze", [f"{p}.grid", f"{p}.last"], [f"{p}.grid1"], name=f"{p}.u"),
                 helper.make_node("Mul", [f"{p}.grid1", f"{p}.mask"], [f"{p}.field"], name=f"{p}.mask")]
        inits = [ints([-1, side, side], "frame_shape"), ints([-1], "last"),
                 ints([0, lo, lo, 0, 2 * n - lo - side, 2 * n - lo - side], "pads"),
                 numpy_helper.from_array(np.stack([mask.real, mask.imag], -1).astype(np.float32), f"{p}.mask")]
        prop_nodes, prop_inits = onnx_propagate(f"{p}.asm", f"{p}.field", H, f"{p}.out_field")
        nodes += prop_nodes
        inits += prop_inits
        nodes += [helper.make_node("Mul", [f"{p}.out_field", f"{p}.out_field"], [f"{p}.sq"], name=f"{p}.sq"),
                  helper.make_node("ReduceSum", [f"{p}.sq", f"{p}.last"], [f"{p}.power"], keepdims=0,
                                   name=f"{p}.power"),
                  helper.make_node("Reshape", [f"{p}.power", f"{p}.flat_shape"], [f"{p}.flat"], name=f"{p}.flat"),
                  helper.make_node("MatMul", [f"{p}.flat", f"{p}.detectors"], [out_name], name=f"{p}.detectors")]
        inits += [ints([-1, 4 * n * n], "flat_shape"),
                  numpy_helper.from_array(R.astype(np.float32), f"{p}.detectors")]
        return nodes, inits

    # ------------------------------------------------------------------------------------------ profiles
    def field_shape(self, name: str, layout: tuple[int, int]) -> tuple[int, ...]:
        return tuple(layout)

    def sample_fabrication(self, spec: Mapping[str, Any], layout: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Per pixel: phase error N(0, s_ph^2) rad, transmission 1 - |N(0, s_t^2)|, drift N(k, (k s_k)^2) rad/K."""
        offset = spec["phase_error_sigma_rad"] * rng.standard_normal(layout)
        loss = np.abs(spec["transmission_loss_sigma"] * rng.standard_normal(layout))
        drift = spec["drift_rad_per_K"] * (1.0 + spec["drift_rel_sigma"] * rng.standard_normal(layout))
        return {self.offset_name: offset, "transmission": np.clip(1.0 - loss, 1e-3, 1.0), "drift_coefficient": drift}

    # ------------------------------------------------------------------------------------------- a fleet
    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        import torch

        dtype = dtype or torch.float32
        offset = stacked([p.fabrication[self.offset_name] for p in profiles], device, dtype)
        return {"static": stacked(settings, device, dtype) + offset,
                "drift": stacked([p.environment.drift_coefficient for p in profiles], device, dtype),
                "transmission": stacked([p.fabrication["transmission"] for p in profiles], device, dtype),
                "shape": tuple(weight_shape)}

    def fleet_forward(self, state: dict[str, Any], chips: slice, h: Any, conditions: ChipState,
                      noise: Any = None, gain: Any = None) -> Any:
        import torch

        phases = state["static"][chips] + state["drift"][chips] * conditions.temperature(2)
        if conditions.control_shift is not None:
            phases = phases + conditions.control_shift
        mask = torch.polar(state["transmission"][chips], phases)                    # (chips, n, n)
        x = h.T.expand(mask.shape[0], *h.T.shape) if h.dim() == 2 else h.transpose(1, 2)
        y = self._outputs(mask, x, state["shape"]).transpose(1, 2)                 # (chips, out, samples)
        if noise is not None:
            y = y + noise[:, :, None]
        return y if gain is None else y * gain[:, None]

    # ------------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray | None, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Each pixel's setting cancels its measured phase offset, wrapped into the DAC's range and quantised;
        residual: ||t e^{i(setting + offset)} - e^{i control}||_F of the calibrated mask."""
        lo, hi = environment.heater_range
        offset = calibration[self.offset_name]
        wanted = lo + np.mod(np.asarray(controls, np.float64) - offset - lo, TWO_PI)
        settings, inside = quantise(wanted, (lo, hi), environment.dac_bits)
        got = calibration["transmission"] * np.exp(1j * (settings + offset))
        return LayerMapping(settings, int((~inside).sum()), float(np.linalg.norm(got - np.exp(1j * controls))))
