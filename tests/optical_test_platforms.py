"""A platform whose on-chip layer is not a weight matrix, written against the optical-layer interface only.

They exist to hold the interface to its promise (``tests/test_platform_conformance.py`` runs them through
every check a shipped platform passes): a non-linear readout and an operator never materialised as a matrix
plug in as one module each, with a process spec, and nothing else in pnndeploy changes.

* :class:`IntensityMesh`: one N-mode Clements mesh read by **intensity detection**, ``y = |U x|^2`` at the
  first ``out`` ports (the MZI as the paper's authors built it, on a small mesh).  Its chips are MZI meshes,
  so it shares the MZI platform's devices, profiles, fabrication model and calibration fields (``MeshDevices``).
(The diffractive network this suite first held as a one-mask toy is now a shipped platform, ``d2nn``.)
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.errors import ModelFileError
from pnndeploy.platforms.base import ChipState, LayerMapping, Platform, quantise, stacked
from pnndeploy.platforms.mesh import TWO_PI, mesh_unitary, one_thread, phase_count
from pnndeploy.platforms.mzi import MeshDevices, _precompensate, _spill
from pnndeploy.platforms.optics import intensity, onnx_intensity_of_linear


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
