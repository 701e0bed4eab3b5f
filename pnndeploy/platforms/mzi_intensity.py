"""The MZI mesh read by intensity detection: the paper's MZI set-up (``--platform mzi --platform-option
detection=intensity``).

One N-mode rectangular (Clements) mesh per on-chip layer: the layer's real inputs x (in <= N) drive the first
``in`` input modes in phase, the mesh applies U(phases), and a photodiode on every output port reads the power
``I = |U x|^2`` (N values).  The scores are the first ``out`` ports of the intensities **normalised by their L2
norm over all N ports**, ``y = I[:out] / max(||I||_2, 1e-12)``: what the authors' notebooks do
(``torch.nn.functional.normalize(|Ux|^2, dim=1)`` after the 64-mode mesh, then ``[:, :10]``).  Why keep it:

* the scores no longer depend on the light's total power (laser power, a loss common to all ports, the front
  end's scale): only how the mesh distributes the light among its ports, which is what its phases set;
* the readout reads every port, so a chip must bring all N ports to detectors (the normalisation is digital).

Dividing by the input power |x|^2 instead (the sum over all ports of a lossless mesh: an L1 normalisation) would
also be scale-free; we follow the authors so that their set-up is what runs.  The digital gain and bias after
the chip (every pnndeploy layer has them) set the logits' scale, which the authors' model lacks.

The output phase screen of the mesh changes no intensity; it stays a control (a mesh has it) but trains to
nothing.  Everything about the devices (phase shifters, couplers, their fabrication errors, drift, crosstalk,
profiles) is the coherent mesh's (:class:`pnndeploy.platforms.mzi.MeshDevices`): the same chips, read otherwise.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.errors import ConfigError, ModelFileError
from pnndeploy.platforms.base import ChipState, Clipping, LayerMapping, Platform, quantise, stacked
import pnndeploy.platforms.mesh_kernel as mesh_kernel
from pnndeploy.platforms.mesh import mesh_unitary, meshes_per_pass, phase_count
from pnndeploy.platforms.mesh_jacobian import complex_loss_and_gradient
from pnndeploy.platforms.mzi import MeshDevices, _precompensate, _spill
from pnndeploy.platforms.optics import onnx_intensity_of_linear
from pnndeploy.threads import one_thread

#: The floor of the norm the intensities are divided by (torch's ``normalize``): no light gives zeros, not NaN.
NORM_EPS = 1e-12
#: Iterations of the fit of a layer's phases through a chip's calibrated mesh.
FIT_ITERATIONS = 150


class MZIIntensityPlatform(MeshDevices, Platform):
    """One N-mode mesh per layer read by intensity: an (out, in) layer, in and out <= N, gives the normalised
    |U x|^2 at the first out ports; controls are the mesh's N^2 phases (rad)."""

    name = "mzi"
    description = "a Mach-Zehnder (Clements) mesh read by intensity detection"
    linear = False
    detection = "intensity"
    #: measured slower side by side at 30 samples (3.2-4.6 against 1.8 ms, 40 chips), no faster at 3,000: serial
    chunks_side_by_side = False

    def fleet_chip_bytes(self, weight_shape: tuple[int, int], samples: int,
                         params: Mapping[str, Any] | None = None) -> int:
        """Every port's power before the first ``out`` are kept: N x samples, and the mesh's U."""
        n = self._modes(params)
        return 16 * samples * n + 16 * n * n

    # ---------------------------------------------------------------------------------------- a layer
    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """N^2 phases; a layer larger than the mesh is refused (intensity detection cannot tile blocks)."""
        n = self._modes(params)
        out_f, in_f = weight_shape
        if out_f > n or in_f > n:
            error = ConfigError if params is None else ModelFileError
            raise error(f"a {in_f} -> {out_f} on-chip layer does not fit one {n}-mode mesh read by intensity "
                        f"(inputs and outputs at most {n}): give --hidden/--onchip so that each on-chip layer "
                        f"has at most {n} of each, or a larger mesh (--platform-option modes=...)")
        return (phase_count(n),)

    def _fields(self, controls: Any, in_f: int, ratios: Any = None, aligned: bool = False) -> Any:
        """U[..., :, :in] of the mesh at ``controls``: every output port, the inputs driven (complex torch)."""
        return mesh_unitary(controls, self.modes, ratios, aligned)[..., :in_f]

    def forward(self, controls: Any, x: Any, weight_shape: tuple[int, int], perturbation: Any = None) -> Any:
        U = self._fields(controls, weight_shape[1])
        x = x.to(U.real.dtype)
        ports = (x @ U.real.T) ** 2 + (x @ U.imag.T) ** 2                         # (batch, N)
        return normalised(ports, -1)[..., :weight_shape[0]]

    def onnx_layer(self, name: str, weight: np.ndarray | None, controls: np.ndarray, weight_shape: tuple[int, int],
                   x_name: str, out_name: str, params: Mapping[str, Any] | None = None) -> tuple[list[Any], list[Any]]:
        """|x U^T|^2 over all ports (two Gemms), divided by its L2 norm (ReduceL2, Max with the floor), sliced."""
        import torch
        from onnx import helper, numpy_helper

        U = self._fields(torch.from_numpy(np.asarray(controls, np.float64)), weight_shape[1]).numpy()
        nodes, inits = onnx_intensity_of_linear(name, U, x_name, f"{name}.ports")
        nodes += [
            helper.make_node("ReduceL2", [f"{name}.ports"], [f"{name}.norm"], axes=[1], keepdims=1,
                             name=f"{name}.norm"),
            helper.make_node("Max", [f"{name}.norm", f"{name}.eps"], [f"{name}.norm_floor"], name=f"{name}.floor"),
            helper.make_node("Div", [f"{name}.ports", f"{name}.norm_floor"], [f"{name}.normalised"],
                             name=f"{name}.normalise"),
            helper.make_node("Slice", [f"{name}.normalised", f"{name}.start", f"{name}.end", f"{name}.axis"],
                             [out_name], name=f"{name}.scores"),
        ]
        inits += [numpy_helper.from_array(np.array(NORM_EPS, dtype=np.float32), f"{name}.eps"),
                  *(numpy_helper.from_array(np.array([v], dtype=np.int64), f"{name}.{k}")
                    for k, v in (("start", 0), ("end", weight_shape[0]), ("axis", 1)))]
        return nodes, inits

    # ---------------------------------------------------------------------------------------- a fleet
    def noise_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        """An additive offset on each score (a normalised port power, dimensionless)."""
        return (weight_shape[0],)

    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """Static phase of every shifter (setting + offset + crosstalk), drift coefficients, the true ratios."""
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
        """Each chip's mesh at its drifted phases and true couplers, read by intensity on all ports, normalised."""
        import torch

        out_f, in_f = state["shape"]
        phases = state["static"][chips] + state["drift"][chips] * conditions.temperature(1)
        if conditions.control_shift is not None:
            phases = phases + conditions.control_shift
        ratios = state["ratios"][chips]
        mesh_kernel.realised(len(phases), self.modes)
        # passes that stay in cache; as large as a bound allows where the compiled kernel realises them
        step = meshes_per_pass(self.modes, mesh_kernel.takes(self.modes, phases, ratios))
        with one_thread():          # a chip's mesh the same bits in any batch (see mesh_unitary)
            parts = [self._fields(phases[c:c + step], in_f, ratios[c:c + step], aligned=True)
                     for c in range(0, len(phases), step)]
            U = torch.cat(parts) if parts else self._fields(phases, in_f, ratios, aligned=True)   # (chips, N, in)
        h = h.expand(U.shape[0], *h.shape) if h.dim() == 2 else h
        # the real inputs' field as two real GEMMs per chip (a chip's bits then do not depend on its batch)
        ports = torch.bmm(U.real.contiguous(), h) ** 2 + torch.bmm(U.imag.contiguous(), h) ** 2   # (chips, N, S)
        y = normalised(ports, 1)[:, :out_f]
        if noise is not None:
            y = y + noise[:, :, None]
        return y if gain is None else y * gain[:, None]

    # ---------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray | None, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Fit the phases of the *calibrated* mesh (measured ratios) so that every port reads what the trained
        mesh reads, subtract the measured offsets, pre-compensate the crosstalk, quantise.

        A port's power for real inputs is the quadratic form x^T Re(conj(u_k) u_k^T) x of its row u_k: the fit
        matches those N forms (blind, as the detectors are, to each port's phase), from the trained phases; the
        residual is the Frobenius distance left between them.  The fit's gradient is taken by hand
        (:func:`_port_loss`, the mesh's sweeps of :func:`complex_loss_and_gradient`): an evaluation of a 64-mode
        mesh 14.6 -> 7.3 ms against autograd.  All on one intra-op thread: the residual's sum over a 64-mode mesh's
        forms split over two threads rounded otherwise than on one.  A fleet's chips are mapped one after another
        (the default :meth:`map_fleet_layer`): two chips side by side on two threads were 7 % slower, the interpreter
        lock held for the ~800 small ops of each evaluation."""
        with one_thread():
            return self._map_layer(controls, calibration, environment, layout, tuple(weight_shape))

    def _map_layer(self, controls: np.ndarray, calibration: Mapping[str, np.ndarray], environment: Any,
                   layout: tuple[int, int], weight_shape: tuple[int, int]) -> LayerMapping:
        """The work of :meth:`map_layer`, which runs it on one intra-op thread."""
        import torch

        n = layout[0]
        in_f = weight_shape[1]
        ratios = torch.from_numpy(np.asarray(calibration["splitter_ratio"], np.float64))
        start = torch.from_numpy(np.asarray(controls, np.float64))
        target = _port_forms(self._fields(start, in_f))
        phases = start.clone().requires_grad_(True)
        optimiser = torch.optim.LBFGS([phases], max_iter=FIT_ITERATIONS, tolerance_grad=1e-10,
                                      tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

        def loss() -> Any:        # the gradient by hand (:func:`_port_loss`), 2x faster than autograd at 64 modes
            with torch.no_grad():
                value, grad = complex_loss_and_gradient(phases.detach()[None], n, ratios[None],
                                                        partial(_port_loss, target=target, in_f=in_f))
            phases.grad = grad[0]
            return value[0]

        optimiser.step(loss)
        offset = calibration[self.offset_name]
        lo, hi = environment.heater_range
        wanted, unmet = _precompensate(phases.detach().numpy() - offset, float(environment.crosstalk), n, lo, hi)
        settings, inside = quantise(wanted, (lo, hi), environment.dac_bits)
        got = torch.from_numpy(settings + offset + float(environment.crosstalk) * _spill(settings, n))
        residual = float(((_port_forms(self._fields(got, in_f, ratios)) - target) ** 2).sum().sqrt())
        return LayerMapping(settings, Clipping.of(settings.size, inside=~unmet & inside), residual)


def normalised(ports: Any, dim: int) -> Any:
    """Port powers divided by their L2 norm along ``dim`` (floored at :data:`NORM_EPS`): the authors' readout.

    The floor is taken on the squared norm, before the square root: a sample without light (a front end whose
    ReLUs are all off) then gives zeros with zero gradients, where the norm's own gradient at 0 is 0/0 = NaN."""
    return ports / (ports * ports).sum(dim, keepdim=True).clamp_min(NORM_EPS * NORM_EPS).sqrt()


def _port_forms(U: Any) -> Any:
    """Re(conj(u_k) u_k^T) of every row u_k of U (..., N, in): port k's power for real x is x^T form_k x."""
    return U.real[..., :, :, None] * U.real[..., :, None, :] + U.imag[..., :, :, None] * U.imag[..., :, None, :]


def _port_loss(U: Any, target: Any, in_f: int) -> tuple[Any, Any]:
    """sum_k ||form_k - target_k||^2 of meshes U (B, N, N) driven on their first ``in_f`` inputs, and its
    gradient G = dL/dRe U + i dL/dIm U (:func:`~pnndeploy.platforms.mesh_jacobian.complex_loss_and_gradient`):
    with R_k = form_k - target_k (symmetric), dL/dRe u_k = 4 R_k Re u_k and dL/dIm u_k = 4 R_k Im u_k.  Used one
    mesh at a time: its products' bits may depend on the meshes computed with it (a batched fit would need that
    made batch-independent first, as :func:`~pnndeploy.platforms.mesh_jacobian.loss_and_gradient` is)."""
    import torch

    V = U[..., :in_f]
    R = _port_forms(V) - target
    G = torch.zeros_like(U)
    G[..., :in_f] = torch.complex((R @ V.real[..., None])[..., 0], (R @ V.imag[..., None])[..., 0]) * 4.0
    return (R * R).sum((-3, -2, -1)), G


__all__ = ["MZIIntensityPlatform", "NORM_EPS", "normalised"]
