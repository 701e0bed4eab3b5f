"""Mach-Zehnder interferometer (MZI) mesh: every weight of a layer from many phases at once.

A layer is realised by an N-mode rectangular (Clements) mesh (:mod:`pnndeploy.platforms.mesh`)
read out by **coherent (balanced homodyne) detection**: the input powers of the
layer drive the N input modes in phase, the mesh applies the unitary U(phases),
and each output's field is mixed with a reference of the same phase, so the
detector pair measures the real part of the field.  The layer's weights are
therefore ``W = Re(U)``, a real N x N matrix with signed entries.

Why this and not the alternatives the literature uses:

* W = U S V^T (two meshes and a column of attenuators) needs twice the phases
  and an amplifier column to reach any W; Re(U) reaches every real W whose
  singular values are <= 1 with one mesh (W = P S Q^T is Re of the unitary
  P (S + i sqrt(1 - S^2)) Q^T), and the digital gain after the chip supplies
  any scale: the baseline's W is divided by its largest singular value per row
  block and the gain multiplied by it, which changes no output.
* one unitary with intensity detection (|U x|^2, the paper's MZI set-up) is
  quadratic in the inputs: not a weight matrix.  It is the option
  ``detection=intensity`` of this platform, whose :meth:`MeshDevices.configure`
  then gives a non-linear platform of the same name and chips
  (:mod:`pnndeploy.platforms.mzi_intensity`).

A layer larger than the mesh is tiled: its (out, in) weights are cut into
N x N blocks, each realised by the same physical mesh with its own phases
(the mesh reused over time, like the MRR array), so each block's controls are
N^2 phases and every fabrication error of the mesh touches every block.

Per chip (fabrication truth): every coupler's power splitting ratio
r = (1 + eps)/2 with eps ~ N(0, sigma_bs^2) (amplitudes sqrt(1 +- eps)/sqrt(2),
clipped to (0, 1) so no amplitude is NaN), a phase offset N(0, sigma_ph^2) on
every phase shifter, a thermal phase drift k (rad/K) per shifter; per chip,
thermal crosstalk to the neighbouring shifters of the same column, detector
noise and the phase DAC.  Calibration holds the measured offsets and ratios.
"""

from __future__ import annotations

import math
import threading
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.errors import ModelFileError
from pnndeploy.platforms.base import ChipState, Clipping, LayerMapping, LinearPlatform, PhaseControls, Platform, \
    Range, quantise, solve_crosstalk, stacked
from pnndeploy.platforms.faults import faulty_flags
import pnndeploy.platforms.mesh_kernel as mesh_kernel
from pnndeploy.platforms.lbfgs import batched_lbfgs
from pnndeploy.platforms.mesh_jacobian import gauss_newton_metric, loss_and_gradient
from pnndeploy.platforms.options import PlatformOption
from pnndeploy.platforms.mesh import KERNEL_PASS_BYTES, TWO_PI, corrected_phases, decompose, mesh_layout, \
    mesh_unitary, meshes_per_pass, mzi_count, phase_count, unitary_with_real_part
from pnndeploy.threads import each_on_one_thread, one_thread, threads_within_memory

#: Iterations of the fit of a layer's phases through a chip's calibrated mesh model (each block its own problem):
#: from a Gauss-Newton metric, 12 leave less residual than 80 from the identity did (benchmarks/mzi_bench.py).
FIT_ITERATIONS = 12
#: Iterations where a layer's blocks are padded (fewer weights than phases: the metric is singular there and
#: damping alone steers those directions, so the fit converges more slowly): with 12, 5 of 64 chips of the
#: benchmark's 10 x 32 layer kept more residual than 80 plain iterations left them; with 18, none of 512.  (A
#: chip's residual also jumps where a phase lands at the heater range's edge and the crosstalk compensation clips
#: it: with 20, one chip's fit was better and its residual 2.6 times worse.)
PADDED_FIT_ITERATIONS = 18
#: Iterations for the blocks of a chip with faulty shifters: a held phase breaks the closed-form start, the fit
#: has far to go (with 12, 24 or 48 some chips kept more residual than before; with 80, as before, none did).
FAULTY_FIT_ITERATIONS = 80
#: Iterations of the second fit of a faulty chip with crosstalk (its held phases moved by the neighbours' spill):
#: with 20 (as before) or 40, one or two chips of 16 kept more residual than before; with 80, none.
REFIT_ITERATIONS = 80
#: Damping of the Gauss-Newton metric the fit starts from (J^T J + damping I; J's entries are O(1)): 1e-3 let
#: some blocks step too far (a worse residual on a fifth of the chips), 1e-1 slows every block.  (Lower damping
#: also costs the metric's float32 inverse accuracy: mesh_jacobian.spd_inverse_by_halves.)
GN_DAMPING = 1e-2
#: The largest mesh (in phases) fitted from a Gauss-Newton metric: the metric is phases^2 floats per block (4 MiB
#: at 32 modes, 16 GiB at 256), and its factorisation phases^3; a larger mesh is fitted as before, from the
#: identity, for ``PLAIN_FIT_ITERATIONS``.
METRIC_MAX_PHASES = 32 * 32
PLAIN_FIT_ITERATIONS = 80
#: Guards the fleets' caches of realised weights: a fleet's chunks of chips may be evaluated on several threads.
_CACHE_LOCK = threading.Lock()

#: Bytes of realised weights a fleet keeps per layer for reuse under the same drift (a model of L layers: L times).
MAX_CACHED_BYTES = 256 * 2 ** 20
#: Memory a batch of chips fitted together may hold (:func:`_map_batches` estimates a block's): 512 blocks of a
#: 16-mode mesh.  Enough to amortise torch's per-call cost, which on two threads is also time holding the
#: interpreter lock (dispatching ops): batches of 64 chips of the benchmark's 32 x 64 layer mapped 512 chips in
#: 23.6 ms a chip where 32 took 25.7 (128: no faster); larger meshes fit fewer blocks at once, and a chip whose
#: layer alone holds more (a 3072 x 512 layer on 32-mode meshes: 12 GiB) is fitted in pieces of its blocks.
MAP_BATCH_BYTES = 8 * 512 * 256 ** 2
#: Precision of the fit (the residual is always computed in float64).
FIT_DTYPE = "float32"
#: The largest mesh an option or a model file may ask for (a 256-mode mesh has 65,536 phases).
MAX_MODES = 256
#: What model files written before ``detection`` was an option recorded for it.
LEGACY_COHERENT = "coherent (W = Re U)"


def _detections() -> dict[str, type]:
    """The platform class of each ``detection`` (imported here: the intensity read-out builds on this module)."""
    from pnndeploy.platforms.mzi_intensity import MZIIntensityPlatform

    return {"coherent": MZIPlatform, "intensity": MZIIntensityPlatform}


class MeshDevices(PhaseControls):
    """What every platform built on one MZI mesh shares, whatever reads its outputs: the devices (phase shifters,
    couplers), their fabrication and drift model, the profile fields, the mesh size and how phases wrap."""

    control_units = "rad"
    control_noun = "phase"
    device_noun = "phase_shifters"
    #: realising the meshes (torch's passes on one thread, or the compiled loop) is most of an evaluation: a
    #: 512-chip fleet at a new drift 31-45 -> 20-29 ms with the loop (benchmarks/mzi_bench.py, six pairs); the
    #: intensity read-out measured otherwise and sets it back
    chunks_side_by_side = True
    device_section = "mzi"
    profiles_subdir = "mzi"
    offset_name = "phase_offset"
    param_units = {"splitter_ratio": "1"}
    param_ranges = {"splitter_ratio": Range(0.0, 1.0, lo_inclusive=False, hi_inclusive=False)}
    nominal = {"splitter_ratio": 0.5}
    control_range = (0.0, TWO_PI)
    #: Thermal phase drift of a silicon thermo-optic shifter: 2 pi (dn/dT) L / lambda with
    #: dn/dT = 1.8e-4 /K, L = 100 um, lambda = 1.55 um: about 0.07 rad/K.
    nominal_drift = 0.07
    #: noise-aware's default phase noise (rad): the default MZI fleet's calibration error.
    default_noise = 0.05
    periodic = True
    options = (
        PlatformOption("modes", 16, "modes", "the mesh's size: a chip is a modes x modes mesh", lo=2, hi=MAX_MODES),
        PlatformOption("detection", "coherent", "1", "how the outputs are read: coherent (W = Re U, a weight "
                       "matrix, tiled over modes x modes blocks) or intensity (|U x|^2 normalised, the first out "
                       "ports; a layer must fit one mesh)", choices=("coherent", "intensity")),
    )
    #: Modes of the mesh models are trained on (default: the default MZI fleet's mesh).
    modes = 16
    #: How the mesh's outputs are read (the class: :class:`MZIPlatform` or ``MZIIntensityPlatform``).
    detection = "coherent"
    minimal_layout = (2, 2)

    def configure(self, values: Mapping[str, Any] | None, error: type[Exception] = ValueError,
                  where: str = "--platform-option") -> Platform:
        """The options set, on the class that reads the mesh as ``detection`` says: intensity detection is not a
        weight matrix, so it is another (non-linear) platform of the same name, chips and fabrication model."""
        configured = super().configure(values, error, where)      # type: ignore[misc]
        wanted = _detections()[configured.detection]
        if type(configured) is wanted:
            return configured
        other = wanted()
        for option in self.options:
            setattr(other, option.name, getattr(configured, option.name))
        return other

    def recorded_options(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Model files written before ``detection`` was an option recorded a description of the coherent read-out."""
        values = super().recorded_options(params)                  # type: ignore[misc]
        if values.get("detection") == LEGACY_COHERENT:
            values["detection"] = "coherent"
        return values

    def _modes(self, params: Mapping[str, Any] | None) -> int:
        """The mesh size a model was trained for (``platform_params.modes``; a file without it: this platform's)."""
        if params is None or "modes" not in params:
            return self.modes
        value = params["modes"]
        if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= MAX_MODES:
            raise ModelFileError(f"model metadata platform_params.modes is {value!r}, expected the mesh size the "
                                 f"model was trained for (an integer from 2 to {MAX_MODES}); re-export the model")
        return value

    # --------------------------------------------------------------------------------------- profiles
    def layout_problem(self, layout: tuple[int, int]) -> str | None:
        rows, cols = layout
        if rows != cols:
            return "an MZI mesh is square: rows = cols = its number of modes"
        if rows < 2:
            return "an MZI mesh needs at least 2 modes"
        if rows != self.modes:
            return (f"a mesh of {rows} modes is not one of modes={self.modes} (a model for it: --platform-option "
                    f"modes={rows}; a process spec or profile that states modes must agree with its layout)")
        return None

    def layout_options(self, layout: tuple[int, int]) -> dict[str, Any]:
        """A mesh's layout is its size: a spec or profile that does not state ``modes`` has rows of them."""
        return {"modes": int(layout[0])} if 2 <= int(layout[0]) <= MAX_MODES else {}

    def field_shape(self, name: str, layout: tuple[int, int]) -> tuple[int, ...]:
        n = layout[0]
        return (mzi_count(n), 2) if name == "splitter_ratio" else (phase_count(n),)

    def device_shape(self, layout: tuple[int, int]) -> tuple[int, ...]:
        return (phase_count(layout[0]),)

    def sample_fabrication(self, spec: Mapping[str, Any], layout: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Couplers r = (1 + eps)/2, eps ~ N(0, s_bs^2); phase offsets N(0, s_ph^2); drift N(k, (k s_k)^2).

        ``spec`` is the ``mzi`` section of process.yaml.
        """
        n = layout[0]
        eps = spec["splitter_error_sigma"] * rng.standard_normal((mzi_count(n), 2))
        offset = spec["phase_error_sigma_rad"] * rng.standard_normal(phase_count(n))
        drift = spec["drift_rad_per_K"] * (1.0 + spec["drift_rel_sigma"] * rng.standard_normal(phase_count(n)))
        return {
            self.offset_name: offset,
            # |eps| >= 1 would make an amplitude sqrt(1 - eps) NaN: a coupler keeps some light in each arm
            "splitter_ratio": np.clip((1.0 + eps) / 2.0, 1e-3, 1.0 - 1e-3),
            "drift_coefficient": drift,
        }


class MZIPlatform(MeshDevices, LinearPlatform):
    """Rectangular MZI mesh with coherent detection; controls are phases (rad), N^2 per N x N block."""

    name = "mzi"
    description = "a Mach-Zehnder (Clements) mesh with coherent detection"
    #: A faulty shifter holds its phase; the mapper fits the other phases of each block around it.
    faults_supported = True

    def device_spill(self, values: np.ndarray, layout: tuple[int, int]) -> np.ndarray:
        """The shifters above and below in the same column (:func:`_spill`)."""
        return _spill(np.asarray(values, np.float64), layout[0])

    # ---------------------------------------------------------------------------------------- a layer
    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        n = self._modes(params)
        out_f, in_f = weight_shape
        return (math.ceil(out_f / n), math.ceil(in_f / n), phase_count(n))

    def nominal_weights(self, controls: Any, weight_shape: tuple[int, int]) -> Any:
        n = self.modes
        to, ti, _ = controls.shape
        U = mesh_unitary(controls, n)                               # (to, ti, n, n)
        W = U.real.permute(0, 2, 1, 3).reshape(to * n, ti * n)
        return W[:weight_shape[0], :weight_shape[1]]

    def weights_to_controls(self, weight: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """Decompose each block; a row block whose largest singular value s exceeds 1 is divided by s."""
        n = self.modes
        blocks = _blocks(weight, n)
        to, ti = blocks.shape[:2]
        scale = np.ones(to)
        for bo in range(to):
            s = max(float(np.linalg.norm(blocks[bo, bi], 2)) for bi in range(ti))
            if s > 1.0:
                scale[bo] = s
                blocks[bo] /= s
        controls, _ = _decompose_blocks(blocks)
        return controls, 0, np.repeat(scale, n)[:weight.shape[0]]

    # ---------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """One chip: :meth:`map_fleet_layer` of a fleet of one (the same fit, so the same settings)."""
        return self.map_fleet_layer(weight, controls, [calibration], [environment], layout, params, weight_shape)[0]

    def map_fleet_layer(self, weight: np.ndarray, controls: np.ndarray,
                        calibrations: Sequence[Mapping[str, np.ndarray]], environments: Sequence[Any],
                        layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                        weight_shape: tuple[int, int] | None = None) -> list[LayerMapping]:
        """Fit each block's phases through each chip's *calibrated* mesh (measured ratios), subtract the measured
        offsets, pre-compensate the known thermal crosstalk, wrap into the heater range and quantise.

        Every block of every chip is its own least-squares problem, solved together (:func:`batched_lbfgs`,
        ``FIT_ITERATIONS`` steps at most, ``PADDED_FIT_ITERATIONS`` for a layer with padded blocks and
        ``FAULTY_FIT_ITERATIONS`` for a chip with faulty shifters,
        in batches of chips of at most :data:`MAP_BATCH_BYTES` (a larger chip in pieces of its blocks), as many at
        once as torch has threads, each on one intra-op thread (:func:`each_on_one_thread`)); what the fit leaves is in
        the residual.  Shifters whose crosstalk-compensated setting falls outside the heater range count as
        clipped.  Shifters a calibration flags ``faulty`` ignore their setting: they are programmed at 0, held at
        what they then realise (offset + the neighbours' spill) and the others are fitted around them.

        The fit starts from the trained phases (so SAT's flat region is kept): the chip's mesh is the model's,
        which mapping checks first (a chip of another mesh size is refused, :meth:`Platform.mismatch`).
        """
        import torch

        n = layout[0]
        blocks = _blocks(weight.astype(np.float64), n)
        mask = _blocks(np.ones(weight.shape), n) > 0
        start = controls.astype(np.float64)
        size, threads = _map_batches(len(calibrations), blocks.shape[0] * blocks.shape[1], n,
                                     torch.get_num_threads())
        parts = [slice(k, k + size) for k in range(0, len(calibrations), size)]
        mapped = each_on_one_thread(lambda part: self._map_chips(blocks, mask, start, calibrations[part],
                                                                 environments[part], n), parts, threads)
        return [m for batch in mapped for m in batch]

    def _map_chips(self, blocks: np.ndarray, mask: np.ndarray, start: np.ndarray,
                   calibrations: Sequence[Mapping[str, np.ndarray]], environments: Sequence[Any],
                   n: int) -> list[LayerMapping]:
        """:meth:`map_fleet_layer` for one batch of chips."""
        ratios = np.stack([np.asarray(c["splitter_ratio"], np.float64) for c in calibrations])
        offsets = np.stack([np.asarray(c[self.offset_name], np.float64) for c in calibrations])
        faulty = np.stack([faulty_flags(c, (offsets.shape[1],)) for c in calibrations])           # (chips, n^2)
        crosstalk = np.array([float(e.crosstalk) for e in environments])
        to, ti = blocks.shape[:2]
        fixed = np.broadcast_to(faulty[:, None, None, :], (len(calibrations), to, ti, faulty.shape[1]))
        held = np.broadcast_to(offsets[:, None, None, :], fixed.shape)          # a faulty phase: its offset
        realised = _fit_phases(blocks, mask, start, ratios, n, fixed, held)
        settings, clippings = self._program(realised, offsets, faulty, crosstalk, environments, n)
        redo = np.flatnonzero(faulty.any(axis=1) & (crosstalk != 0))
        if redo.size:
            # a faulty shifter also gets its neighbours' spill, known once they are set: fit once more around it,
            # on those chips only (a chip's mapping must not depend on the chips mapped with it)
            held = offsets[redo, None, None, :] + crosstalk[redo, None, None, None] * _spill(settings[redo], n)
            again = _fit_phases(blocks, mask, realised[redo], ratios[redo], n, fixed[redo], held,
                                REFIT_ITERATIONS, False)
            settings[redo], redone = self._program(again, offsets[redo], faulty[redo], crosstalk[redo],
                                                   [environments[k] for k in redo], n)
            for k, clipping in zip(redo, redone):
                clippings[k] = clipping
        residuals = _residuals(settings, offsets, crosstalk, ratios, blocks, mask, n)
        return [LayerMapping(settings[k], clippings[k], float(residuals[k])) for k in range(len(calibrations))]

    def _program(self, realised: np.ndarray, offsets: np.ndarray, faulty: np.ndarray, crosstalk: np.ndarray,
                 environments: Sequence[Any], n: int) -> tuple[np.ndarray, list[Clipping]]:
        """Each chip's DAC settings for realised phases (chips, to, ti, n^2), and what was clipped, by cause.

        Chips of the same crosstalk, heater range and DAC are programmed together (a lot's chips usually share
        them: one pass of numpy's ops over all of them instead of one per chip), each as it would be alone."""
        settings = np.empty_like(realised)
        inside = np.empty(realised.shape, dtype=bool)
        broken = np.broadcast_to(faulty[:, None, None, :], realised.shape)
        groups: dict[tuple[float, float, float, int], list[int]] = {}
        for k, env in enumerate(environments):
            groups.setdefault((float(crosstalk[k]), *map(float, env.heater_range), int(env.dac_bits)), []).append(k)
        for (c, lo, hi, bits), members in groups.items():
            ks = np.asarray(members)
            wanted, unmet = _precompensate_chips(realised[ks] - offsets[ks, None, None, :], c, n, lo, hi, broken[ks])
            quantised, reachable = quantise(wanted, (lo, hi), bits)
            settings[ks] = np.where(broken[ks], 0.0, quantised)
            inside[ks] = ~unmet & reachable
        return settings, Clipping.of_each(math.prod(settings.shape[1:]), None, inside, broken)

    # ------------------------------------------------------------------------------------- simulation
    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """Static phase of every shifter of every block (setting + offset + crosstalk), the true ratios."""
        import torch

        dtype = dtype or torch.float32
        n = layout[0]
        h = stacked(settings, device, dtype)                                # (chips, to, ti, n^2)
        crosstalk = stacked([p.environment.crosstalk for p in profiles], device, dtype)[:, None, None, None]
        offset = stacked([p.fabrication[self.offset_name] for p in profiles], device, dtype)[:, None, None, :]
        return {
            "static": h + offset + crosstalk * _spill(h, n),
            "drift": stacked([p.environment.drift_coefficient for p in profiles], device, dtype)[:, None, None, :],
            "ratios": stacked([p.fabrication["splitter_ratio"] for p in profiles], device, dtype)[:, None, None],
            "shape": (*weight_shape, n),
        }

    def fleet_weights(self, state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """phases = static + k dT (+ shift); W = Re(U(phases; true ratios)), blocks reassembled.

        Realising the meshes is most of an evaluation's cost, so the weights of each batch of chips are kept for
        the last drift (temperature and shift) they were realised at: another noise draw or another set of
        samples under the same drift reuses them (a copy, the same bits)."""
        key = (chips.start, chips.stop)
        with _CACHE_LOCK:                               # a fleet's chunks may be evaluated on several threads
            cache = state.setdefault("realised", {})
            hit = cache.get(key)
        if hit is not None and _same(hit[0], conditions.delta_T) and _same(hit[1], conditions.control_shift):
            return hit[2].clone()
        W = self._realise(state, chips, conditions)
        size = W.numel() * W.element_size()
        if size <= MAX_CACHED_BYTES:
            shift = conditions.control_shift
            entry = (conditions.delta_T.clone(), None if shift is None else shift.clone(), W.clone())
            with _CACHE_LOCK:
                cache.pop(key, None)
                while cache and sum(v[2].numel() * v[2].element_size() for v in cache.values()) + size > \
                        MAX_CACHED_BYTES:
                    cache.pop(next(iter(cache)))           # the oldest batch goes first (another chunking, say)
                cache[key] = entry
        return W

    def _realise(self, state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """:meth:`fleet_weights` computed: the meshes of the chips in ``chips`` realised under ``conditions``."""
        out_f, in_f, n = state["shape"]
        chips_n, to, ti = state["static"][chips].shape[:3]
        mesh_kernel.realised(chips_n * to * ti, n)
        # one intra-op thread: a chip's mesh the same bits in any batch (see mesh_unitary).  Not spread over the
        # compute's threads here: right after the fleet's matmuls torch's OpenMP workers spin on the other cores,
        # and passes run beside them were slower on two cores (64 chips 10.7 -> 13.9 ms; the compiled kernel on
        # two threads gained nothing either).  The threads are used a level up: a fleet's chunks of chips run side
        # by side (SimulatedFleet.accuracy, chunks_side_by_side), each realising its own meshes.
        with one_thread():
            if mesh_kernel.takes(n, state["static"], state["drift"], state["ratios"], conditions.delta_T,
                                 conditions.control_shift):         # the same bits, 3-4x faster
                return self._realise_compiled(state, chips, conditions)
            phases = state["static"][chips] + state["drift"][chips] * conditions.temperature(3)
            if conditions.control_shift is not None:
                phases += conditions.control_shift[:, None, None, :]
            ratios = state["ratios"][chips]
            W = phases.new_empty((chips_n, out_f, in_f))
            for part, rows in _passes(chips_n, to, ti, meshes_per_pass(n)):
                U = mesh_unitary(phases[part, rows], n, ratios[part], aligned=True)    # (chips, rows, ti, n, n)
                top = rows.start * n
                block = U.real.permute(0, 1, 3, 2, 4).reshape(U.shape[0], -1, ti * n)
                W[part, top:top + block.shape[1]] = block[:, :out_f - top, :in_f]
        return W

    @staticmethod
    def _realise_compiled(state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """:meth:`_realise` by :mod:`mesh_kernel`, in passes of chips whose angles, cos and sin take at most
        :data:`mesh.KERNEL_PASS_BYTES`.  The couplers' products, and where the kernel's padded form costs at most
        half as much again (8 modes and more) the static and drift phases in that form, are kept for the fleet:
        they do not change with the drift."""
        import torch

        out_f, in_f, n = state["shape"]
        with _CACHE_LOCK:                   # made once, by the first of the fleet's chunks to need it
            if "kernel_form" not in state:
                keep = mesh_kernel.aligned_width(n) <= 1.5 * n * n
                state["kernel_form"] = (mesh_kernel.coupler_terms(state["ratios"], n),
                                        (mesh_kernel.aligned(state["static"], n),
                                         mesh_kernel.aligned(state["drift"], n)) if keep else None)
            terms, kept = state["kernel_form"]
        index = range(state["static"].shape[0])[chips]
        to, ti = state["static"].shape[1:3]
        step = max(1, KERNEL_PASS_BYTES // (12 * to * ti * mesh_kernel.aligned_width(n)))
        W = np.empty((len(index), out_f, in_f), dtype=np.float32)
        T = conditions.temperature(3)
        for start in range(0, len(index), step):
            part = index[start:start + step]
            rows, here = slice(part.start, part.stop, part.step), slice(start, start + len(part))
            dT = T[here] if T.ndim else T
            if kept is not None:
                angles = kept[0][rows] + kept[1][rows] * dT
            else:
                angles = mesh_kernel.aligned(state["static"][rows] + state["drift"][rows] * dT, n)
            if conditions.control_shift is not None:
                angles += mesh_kernel.aligned(conditions.control_shift[here], n)[:, None, None, :]
            mesh_kernel.real_blocks(angles, terms[rows], n, (out_f, in_f), out=W[here])
        return torch.from_numpy(W)


def _passes(chips: int, to: int, ti: int, per_pass: int) -> list[tuple[slice, slice]]:
    """(chips, block rows) of each pass of a fleet's meshes (``to`` x ``ti`` blocks a chip), ``per_pass`` meshes
    at most: whole chips a pass, or for a chip of more blocks than a pass holds, rows of its blocks at a time (a
    row at least).  A pass's buffers then stay in cache: twice as fast as realising a batch in one pass."""
    if to * ti <= per_pass:
        step = per_pass // (to * ti)
        return [(slice(c, c + step), slice(0, to)) for c in range(0, chips, step)]
    rows = max(1, per_pass // ti)
    return [(slice(c, c + 1), slice(r, r + rows)) for c in range(chips) for r in range(0, to, rows)]


def _map_batches(chips: int, blocks_per_chip: int, n: int, threads: int) -> tuple[int, int]:
    """(chips a batch, batches at once) for mapping ``chips`` chips: batches as large as :data:`MAP_BATCH_BYTES`
    allows (a chip at least), but one for each thread at least where the fleet is small, and only as many at once
    as :func:`threads_within_memory` allows."""
    chip_bytes = _block_bytes(n) * blocks_per_chip
    size = max(1, min(MAP_BATCH_BYTES // chip_bytes, -(-chips // threads)))
    # a chip above the limit is fitted in pieces of blocks (:func:`_fit_phases`): a piece's metrics are what a batch
    # holds (the chip's per-block targets, phases and settings, tens of KiB a block, are still held whole)
    return size, threads_within_memory(threads, min(size * chip_bytes, _piece_blocks(n) * _block_bytes(n)))


def _block_bytes(n: int) -> int:
    """Memory the fit of one block of an ``n``-mode mesh holds, bytes (what :data:`MAP_BATCH_BYTES` counts)."""
    P = phase_count(n)
    if P <= METRIC_MAX_PHASES:          # the metric and its rows' copy once some blocks stop, phases^2 float32
        return 8 * P * P                # each (J and J J^T are formed a few meshes at a time)
    return 8 * (n + 1) * n * n + 100 * P    # the sweep's partial products (complex64) and the L-BFGS history


def _piece_blocks(n: int) -> int:
    """Blocks fitted together at most (a piece of a batch): :data:`MAP_BATCH_BYTES` of them, one at least."""
    return max(1, MAP_BATCH_BYTES // _block_bytes(n))


def _decompose_blocks(blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ideal-mesh phases (to, ti, n^2) of every block, and which blocks had singular values above 1 (clipped)."""
    to, ti = blocks.shape[:2]
    phases = np.empty((to, ti, blocks.shape[-1] ** 2))
    bad = np.zeros((to, ti), dtype=bool)
    for bo, bi in np.ndindex(to, ti):
        U, clipped = unitary_with_real_part(blocks[bo, bi])
        bad[bo, bi] = clipped > 0
        phases[bo, bi] = decompose(U)
    return phases, bad


def _blocks(weight: np.ndarray, n: int) -> np.ndarray:
    """(out, in) weights as zero-padded n x n blocks (to, ti, n, n)."""
    out_f, in_f = weight.shape
    to, ti = math.ceil(out_f / n), math.ceil(in_f / n)
    padded = np.zeros((to * n, ti * n), dtype=np.float64)
    padded[:out_f, :in_f] = weight
    return padded.reshape(to, n, ti, n).transpose(0, 2, 1, 3).copy()


@lru_cache(maxsize=None)
def _neighbours(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Index of each shifter's neighbour above and below in the same column (-1: none), flat control order.

    theta and phi of the MZI on pair p neighbour those of the MZIs on p - 2 and p + 2 of the same
    column; output phase k neighbours k - 1 and k + 1.
    """
    col, top = mesh_layout(n)
    m = len(col)
    left = np.full(phase_count(n), -1, dtype=np.int64)
    right = np.full(phase_count(n), -1, dtype=np.int64)
    index = {(int(c), int(p)): i for i, (c, p) in enumerate(zip(col, top))}
    for i, (c, p) in enumerate(zip(col, top)):
        for base in (0, m):
            if (int(c), int(p) - 2) in index:
                left[base + i] = base + index[(int(c), int(p) - 2)]
            if (int(c), int(p) + 2) in index:
                right[base + i] = base + index[(int(c), int(p) + 2)]
    k = np.arange(n)
    left[2 * m:] = np.where(k > 0, 2 * m + k - 1, -1)
    right[2 * m:] = np.where(k < n - 1, 2 * m + k + 1, -1)
    return left, right


def _precompensate(target: np.ndarray, crosstalk: float, n: int, lo: float, hi: float,
                   held: np.ndarray | None = None, turns: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Settings h in [lo, hi] with h + crosstalk * (h_left + h_right) = target (mod 2 pi), and a mask of the
    shifters where that could not be met (a heater range of exactly one turn leaves no headroom for the spill).

    A shifter's phase is raised by a fraction of its neighbours' settings (heat spreads in the column), which the
    profile states.  The linear system is solved for fixed whole turns of the targets (:func:`solve_crosstalk`,
    a fixed-point iteration); a setting that lands outside the range moves its target by one turn and the system
    is solved again.  Wrapping inside the iteration instead would change a neighbour's spill by 2 pi * crosstalk
    at every wrap and need not converge.  ``held``: faulty shifters, set to 0 (and never counted as unmet).
    """
    wanted, unmet = _precompensate_chips(target[None], crosstalk, n, lo, hi, None if held is None else held[None],
                                         turns)
    return wanted[0], unmet[0]


def _precompensate_chips(target: np.ndarray, crosstalk: float, n: int, lo: float, hi: float,
                         held: np.ndarray | None = None, turns: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_precompensate` of several chips that share their crosstalk and heater range (``target`` and
    ``held`` with a leading chip axis), each as it would be alone: a chip's turns stop when its own settings are
    in range (solving again could move its converged settings by a rounding)."""
    goal = lo + np.mod(target - lo, TWO_PI)
    if held is not None:
        goal = np.where(held, 0.0, goal)
    h = goal.copy()
    if not crosstalk:
        return h, np.zeros(h.shape, dtype=bool)
    todo = np.arange(len(h))
    for _ in range(turns):
        kept = None if held is None else held[todo]
        h[todo] = solve_crosstalk(goal[todo], crosstalk, lambda x: _spill(x, n), start=h[todo], held=kept)
        below, above = h[todo] < lo, h[todo] > hi
        if kept is not None:
            below, above = below & ~kept, above & ~kept
        moved = (below | above).reshape(len(todo), -1).any(axis=1)
        if not moved.any():
            break
        goal[todo[moved]] += TWO_PI * (below[moved].astype(float) - above[moved].astype(float))
        todo = todo[moved]
    outside = (h < lo) | (h > hi)
    if held is not None:
        outside &= ~held
        return np.where(held, 0.0, np.clip(h, lo, hi)), outside
    return np.clip(h, lo, hi), outside


def _spill(settings: Any, n: int) -> Any:
    """Sum of each shifter's neighbours' settings (what its thermal crosstalk sees), same shape; numpy or torch."""
    left, right = _neighbours(n)
    if isinstance(settings, np.ndarray):
        return np.where(left >= 0, settings[..., left], 0.0) + np.where(right >= 0, settings[..., right], 0.0)
    import torch

    has_left, has_right = (torch.from_numpy(v >= 0).to(settings.device) for v in (left, right))
    zero = settings.new_zeros(())
    return torch.where(has_left, settings[..., torch.from_numpy(left).to(settings.device)], zero) \
        + torch.where(has_right, settings[..., torch.from_numpy(right).to(settings.device)], zero)


def _same(a: Any, b: Any) -> bool:
    """Two optional tensors hold the same values (shape included)."""
    import torch

    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


def _residuals(settings: np.ndarray, offsets: np.ndarray, crosstalk: np.ndarray, ratios: np.ndarray,
               blocks: np.ndarray, mask: np.ndarray, n: int) -> np.ndarray:
    """Per chip, ||Re U - target|| of the calibrated model at the programmed ``settings`` (chips, to, ti, n^2)."""
    import torch

    phases = settings + offsets[:, None, None, :] + crosstalk[:, None, None, None] * _spill(settings, n)
    with torch.no_grad():
        got = mesh_unitary(torch.from_numpy(phases), n, torch.from_numpy(ratios)[:, None, None]).real.numpy()
    return np.sqrt(np.sum(np.where(mask, got - blocks, 0.0) ** 2, axis=(1, 2, 3, 4)))


def _fit_phases(blocks: np.ndarray, mask: np.ndarray, start: np.ndarray, ratios: np.ndarray, n: int,
                fixed: np.ndarray, held: np.ndarray, iterations: int | None = None,
                ideal_start: bool = True) -> np.ndarray:
    """Phases (chips, to, ti, n^2) minimising ||mask (Re U(phases; ratios) - blocks)||^2 per block and chip.

    ``start``: (to, ti, n^2) for every chip, or (chips, to, ti, n^2); ``ratios`` (chips, M, 2); where ``fixed``
    (chips, to, ti, n^2) the phase stays at ``held``.  ``ideal_start``: ``start`` is for the ideal mesh, so the
    fit starts from it corrected for each chip's couplers (:func:`corrected_phases`: most of the way in closed
    form, which cuts the iterations the fit needs by half or more).  Each block of each chip is one problem of
    :func:`batched_lbfgs`, on one thread (many tiny problems: splitting an op costs more than it gives; the
    batches of chips use the other threads), whose initial
    inverse Hessian is the block's Gauss-Newton metric at the start (:func:`gauss_newton_metric`): the fit is
    nearly square and ill-conditioned, and from the identity L-BFGS needed 80 iterations where it now needs 12.
    """
    import torch

    chips = len(ratios)
    to, ti, P = blocks.shape[0], blocks.shape[1], n * n
    start = np.broadcast_to(start, fixed.shape)
    x0 = np.where(fixed, held, corrected_phases(start, ratios[:, None, None], n) if ideal_start else start)
    x0 = x0.reshape(-1, P)
    dtype = getattr(torch, FIT_DTYPE)
    target = torch.from_numpy(np.broadcast_to(blocks, (chips, *blocks.shape)).reshape(-1, n, n).copy()).to(dtype)
    weight = torch.from_numpy(np.broadcast_to(mask, (chips, *mask.shape)).reshape(-1, n, n).astype(np.float32)).to(dtype)
    r = torch.from_numpy(np.repeat(np.asarray(ratios, np.float64), to * ti, axis=0)).to(dtype)

    with one_thread():
        free = None if not fixed.any() else torch.from_numpy(~fixed.reshape(-1, P))
        x = torch.from_numpy(np.ascontiguousarray(x0)).to(dtype)
        with_metric = P <= METRIC_MAX_PHASES
        if iterations is None and not with_metric:
            iterations = PLAIN_FIT_ITERATIONS
        elif iterations is None:       # per block: those of a chip with faulty shifters have further to go
            most = FIT_ITERATIONS if mask.all() else PADDED_FIT_ITERATIONS
            iterations = most if free is None else torch.where(free.all(-1), most, FAULTY_FIT_ITERATIONS)
        step = _piece_blocks(n)         # every block is its own problem: pieces give each block the same bits
        for first in range(0, len(x), step):
            part = slice(first, first + step)
            x[part] = _fit_piece(x[part], n, r[part], target[part], weight[part],
                                 None if free is None else free[part],
                                 iterations[part] if isinstance(iterations, torch.Tensor) else iterations, with_metric)
    return x.double().numpy().reshape(chips, to, ti, P)


def _fit_piece(x: Any, n: int, ratios: Any, target: Any, weight: Any, free: Any, iterations: Any,
               with_metric: bool) -> Any:
    """:func:`_fit_phases` for a piece of its blocks (torch, one row each), from a Gauss-Newton metric
    (``with_metric``) or from the identity."""
    def fun(x: Any, rows: Any) -> tuple[Any, Any]:
        return loss_and_gradient(x, n, ratios[rows], target[rows], weight[rows])

    start = gauss_newton_metric(x, n, ratios, weight, free, GN_DAMPING) if with_metric else None
    return batched_lbfgs(fun, x, free, iterations, metric=start)
