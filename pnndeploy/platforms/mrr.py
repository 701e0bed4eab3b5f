"""Microring-resonator (MRR) weight bank.

Each weight is one ring read out by balanced detection.  With the detuning x
(nm) between the laser line and the ring resonance, half-width gamma (nm) and
extinction a (dimensionless, 0 < a <= 1)::

    W(x) = 1 - 2a / (1 + (x/gamma)^2)

W = 1 - 2a on resonance (x = 0) and tends to +1 far from it; the slope is
steepest at |x| = gamma/sqrt(3).  The function is even in x, so a weight has
two controls (+x and -x); the sign matters once the chip drifts, because a
common thermal shift moves every ring the same way.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np

from pnndeploy.platforms.base import ChipState, Clipping, LayerMapping, LinearPlatform, Range, quantise, \
    solve_crosstalk, stacked
from pnndeploy.platforms.faults import faulty_mask
from pnndeploy.platforms.tiling import ring_index


#: Shallowest resonance a calibration sweep accepts as a ring (a = depth / 2 of the dip, 1 = full extinction).
MIN_EXTINCTION = 0.05
#: Chips :meth:`MRRPlatform.map_fleet_layer` maps as one stack (a 30 x 64 layer's arrays then take 0.5 MB each; 16 and
#: 64 were slower).
MAP_STACK = 32


class _Stack(NamedTuple):
    """One layer's quantised settings on a stack of chips (:meth:`MRRPlatform._stack_settings`), with what the
    mapping's report is computed from: the weights aimed at (float64, padding rows stood in), the calibration and
    offsets per weight, the rings' columns, the held weights (faulty rings and unused rows; may broadcast over
    the inputs), the unused rows, and the reach and range masks."""

    settings: np.ndarray
    weight: np.ndarray
    cal: dict[str, np.ndarray]
    offset: np.ndarray
    ci: np.ndarray
    held: np.ndarray | None
    unused: np.ndarray
    reachable: np.ndarray
    inside: np.ndarray


class MRRPlatform(LinearPlatform):
    """Lorentzian microring weight bank with heater-tuned detuning (nm): one ring, one control, one weight.

    The elementwise special case of the layer interface: a layer's controls have
    the layer's shape, and weight (o, i) sits on ring (o mod R, i mod C) of the
    R x C array (:func:`~pnndeploy.platforms.tiling.ring_index`).
    """

    name = "mrr"
    description = "a microring weight bank"
    control_units = "nm"
    control_noun = "detuning"
    device_noun = "rings"
    device_section = "ring"
    profiles_subdir = ""
    offset_name = "resonance_offset"
    param_units = {"gamma": "nm", "a": "1"}
    param_ranges = {
        "gamma": Range(0.0, math.inf, lo_inclusive=False, hi_inclusive=False),
        "a": Range(0.0, 1.0, lo_inclusive=False, hi_inclusive=True),
    }
    nominal = {"gamma": 0.15, "a": 1.0}
    #: Detunings training may choose (about 17 half-widths).  Kept inside the chips'
    #: heater range (+-3 nm in the default process) so the heater has headroom
    #: left to cancel each ring's resonance offset.
    control_range = (-2.5, 2.5)
    #: Typical thermal shift of a resonance, nm/K (silicon rings: about 80 pm/K).
    nominal_drift = 0.080
    #: noise-aware's default noise on the detunings, nm (the default fleet's calibration error is 0.05 nm).
    default_noise = 0.05

    def transfer(self, control: Any, gamma: Any = 0.15, a: Any = 1.0) -> Any:
        u = control / gamma
        return 1.0 - 2.0 * a / (1.0 + u * u)

    def derivative(self, control: Any, gamma: Any = 0.15, a: Any = 1.0) -> Any:
        u = control / gamma
        return 4.0 * a * u / (gamma * (1.0 + u * u) ** 2)

    def inverse(self, weight: np.ndarray, sign: np.ndarray | float = 1.0, limit: float | None = None,
                gamma: Any = 0.15, a: Any = 1.0) -> tuple[np.ndarray, np.ndarray]:
        weight = np.asarray(weight, dtype=np.float64)
        gamma = np.asarray(gamma, dtype=np.float64)
        a = np.asarray(a, dtype=np.float64)
        lo, hi = self.control_range if limit is None else (-limit, limit)
        x_max = min(abs(lo), abs(hi))
        w_min = 1.0 - 2.0 * a                      # on resonance
        w_max = self.transfer(x_max, gamma, a) if np.isfinite(x_max) else np.float64(1.0)
        reachable = (weight >= w_min - 1e-12) & (weight <= w_max + 1e-12)
        w = np.minimum(np.maximum(weight, w_min), w_max)          # np.clip's values, without its dispatch
        # 1 + u^2 = 2a / (1 - W)  ->  u = sqrt(2a/(1-W) - 1)
        u2 = np.maximum(2.0 * a / np.maximum(1.0 - w, 1e-300) - 1.0, 0.0)
        x = gamma * np.sqrt(u2) * np.where(np.asarray(sign) < 0, -1.0, 1.0)
        x = np.minimum(np.maximum(x, lo), hi)
        fresh = isinstance(reachable, np.ndarray) and reachable.shape == np.shape(x)
        return x, reachable if fresh else np.broadcast_to(reachable, np.shape(x)).copy()

    # ---------------------------------------------------------------------------------------- a layer
    def control_shape(self, weight_shape: tuple[int, int], params: Mapping[str, Any] | None = None) -> tuple[int, ...]:
        return tuple(weight_shape)

    def nominal_weights(self, controls: Any, weight_shape: tuple[int, int] | None = None) -> Any:
        return self.transfer(controls, **self.nominal)

    def project(self, controls: Any) -> None:
        """Clamp the detunings to the training range (headroom for the heater to cancel the offsets)."""
        import torch

        lo, hi = self.control_range
        with torch.no_grad():
            controls.clamp_(lo, hi)

    def weights_to_controls(self, weight: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
        """The nominal inverse on the positive branch (the paper's choice); unreachable W are clipped."""
        x, ok = self.inverse(weight, 1.0, **self.nominal)
        return x, int((~ok).sum()), np.ones(weight.shape[0])

    #: positive: every detuning on the positive branch (:meth:`weights_to_controls`); random: a sign per ring
    #: drawn with the run's seed (as the random init); balanced: signs chosen so that each output row's drift
    #: sensitivity, sum over i of dW/dx * mean input, is about zero (a common thermal shift then cancels on average).
    import_mappings = ("positive", "random", "balanced")

    def import_controls(self, weight: np.ndarray, input_mean: np.ndarray, mapping: str,
                        seed: int) -> tuple[np.ndarray, int, np.ndarray]:
        """The positive-branch detunings with a sign per ring chosen by ``mapping``: W(x) is even, so the nominal
        weights are exactly the same whatever the signs; only the response to drift changes."""
        x, clipped, row_scale = self.weights_to_controls(weight)
        if mapping == "random":
            signs = np.where(np.random.default_rng(seed).random(x.shape) < 0.5, -1.0, 1.0)
        elif mapping == "balanced":
            sensitivity = np.abs(self.derivative(x, **self.nominal)) * np.abs(np.asarray(input_mean))[None, :]
            signs = balanced_signs(sensitivity)
        elif mapping == "positive":
            signs = np.ones_like(x)
        else:
            raise ValueError(f"unknown import mapping {mapping!r}; use one of {', '.join(self.import_mappings)}")
        return signs * x, clipped, row_scale

    def init_controls(self, shape: tuple[int, ...], generator: Any, bound: float = 0.9) -> Any:
        """Detunings whose nominal weights are uniform in [-bound, bound].

        Weights are mapped through the nominal inverse with a random sign, so
        training starts on both flanks of the Lorentzian.
        """
        import torch

        w = (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1) * bound
        sign = torch.where(torch.rand(shape, generator=generator, dtype=torch.float64) < 0.5, -1.0, 1.0)
        g, a = self.nominal["gamma"], self.nominal["a"]
        x = g * torch.sqrt(torch.clamp(2 * a / (1 - w) - 1, min=0.0))
        return (sign * x).to(torch.float32)

    def sample_fabrication(self, spec: Mapping[str, Any], shape: tuple[int, int],
                           rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Rings of one chip: offset N(0, s_r), gamma and a within a few percent, drift N(k, s_k).

        ``spec`` is the ``ring`` section of process.yaml (all lengths in nm).
        """
        gamma = spec["gamma_nm"] * (1.0 + spec["gamma_rel_sigma"] * rng.standard_normal(shape))
        a = spec["a"] * (1.0 - np.abs(spec["a_rel_sigma"] * rng.standard_normal(shape)))
        offset = spec["resonance_offset_sigma_nm"] * rng.standard_normal(shape)
        drift = spec["drift_nm_per_K"] * (1.0 + spec["drift_rel_sigma"] * rng.standard_normal(shape))
        return {
            self.offset_name: offset,
            "gamma": np.maximum(gamma, 1e-3),
            "a": np.clip(a, 1e-3, 1.0),
            "drift_coefficient": drift,
        }

    faults_supported = True

    def device_spill(self, values: np.ndarray, layout: tuple[int, int]) -> np.ndarray:
        """The left and right neighbours in the bank's row (:func:`_neighbour_settings` over the bank itself)."""
        rows, cols = layout
        ci = np.broadcast_to(np.arange(cols)[None, :], (rows, cols))
        return _neighbour_settings(np.asarray(values, np.float64), ci, layout)

    def per_setting(self, values: np.ndarray, settings_shape: tuple[int, ...], layout: tuple[int, int]) -> np.ndarray:
        """The ring of each weight (a ring serves every weight tiled onto it)."""
        ri, ci = ring_index(tuple(settings_shape), layout)
        return np.asarray(values)[ri, ci]

    # ---------------------------------------------------------------------------------------- mapping
    def map_layer(self, weight: np.ndarray, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                  environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                  weight_shape: tuple[int, int] | None = None) -> LayerMapping:
        """Per weight: x* = inverse(W; calibrated gamma, a) on the trained branch; heater settings h whose detuning
        h + measured offset + crosstalk * (neighbours' h) is x* (:meth:`heater_settings`), quantised to the DAC.

        Clipped and counted by cause: a weight beyond the ring's reach (W < 1 - 2a, or W >= 1), a setting the
        solve puts beyond the heater range, and a ring the calibration flags faulty (set to 0: it ignores its
        setting, and spills no heat into its neighbours).  The residual is the calibrated model's, at the quantised
        settings.  What a faulty ring costs is recovered before this, by the other weights of its row
        (:func:`pnndeploy.deploy.fault_compensation.compensate_held`)."""
        return self._map_stack(weight, controls, [calibration], environment, layout)[0]

    def map_fleet_layer(self, weight: np.ndarray | None, controls: np.ndarray,
                        calibrations: Sequence[Mapping[str, np.ndarray]], environments: Sequence[Any],
                        layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                        weight_shape: tuple[int, int] | None = None) -> list[LayerMapping]:
        """:meth:`map_layer` for many chips: those whose heater range, DAC, crosstalk and calibration arrays are
        alike (the same values and types: the same arithmetic) as one stack of up to :data:`MAP_STACK` chips.  Every
        step is elementwise over the stack (the neighbour sums each chip's own columns of one sparse product) and
        each chip's clipping and residual are its own, so each chip gets :meth:`map_layer`'s bits (tested; NaN
        payloads aside: where two NaNs meet, which one's sign is kept may differ) for a few numpy calls per stack
        instead of per chip (a lot's mapping was that overhead: 0.5-0.6 ms a 30 x 64 + 10 x 30 chip, most of it
        the crosstalk solve's dozen sweeps)."""
        if len(calibrations) != len(environments):
            raise ValueError(f"{len(calibrations)} calibrations for {len(environments)} environments")
        groups: dict[tuple, list[int]] = {}
        for k, (calibration, environment) in enumerate(zip(calibrations, environments)):
            groups.setdefault(self._stack_key(calibration, environment), []).append(k)
        mapped: list[LayerMapping | None] = [None] * len(calibrations)
        for members in groups.values():
            for start in range(0, len(members), MAP_STACK):
                part = members[start:start + MAP_STACK]
                for k, m in zip(part, self._map_stack(weight, controls, [calibrations[k] for k in part],
                                                      environments[part[0]], layout)):
                    mapped[k] = m
        return mapped  # type: ignore[return-value]

    def _stack_key(self, calibration: Mapping[str, np.ndarray], environment: Any) -> tuple:
        """What chips mapped as one stack must share: each environment setting's type and value, each calibration
        array's shape and dtype (a stack computes with the first chip's settings, and numpy would promote a
        float32 calibration stacked with float64 ones)."""
        settings = (environment.crosstalk, *environment.heater_range, environment.dac_bits)
        arrays = [np.asarray(calibration[k]) for k in (*self.param_units, self.offset_name)]
        return (tuple((type(v).__name__, np.asarray(v).dtype.str, float(v)) for v in settings),
                tuple((a.shape, a.dtype.str) for a in arrays))

    def layer_settings(self, weight: np.ndarray, controls: np.ndarray, calibration: Mapping[str, np.ndarray],
                       environment: Any, layout: tuple[int, int], params: Mapping[str, Any] | None = None,
                       weight_shape: tuple[int, int] | None = None) -> np.ndarray:
        """:meth:`map_layer`'s settings, the same bits, without its report: the residual's forward model and the
        clipping counts were a fifth of a 30 x 64 layer's mapping, which in-situ training repeats for every layer
        and pass and never reads."""
        return self._stack_settings(weight, controls, [calibration], environment, layout).settings

    def _map_stack(self, weight: np.ndarray, controls: np.ndarray, calibrations: Sequence[Mapping[str, np.ndarray]],
                   environment: Any, layout: tuple[int, int]) -> list[LayerMapping]:
        """:meth:`map_layer` of one layer on a stack of chips that share ``environment``'s heater range, DAC and
        crosstalk: arrays (chips, out, in), each element computed as for one chip alone."""
        stack = self._stack_settings(weight, controls, calibrations, environment, layout)
        settings, held, unused = stack.settings, stack.held, stack.unused
        applied = settings if held is None else np.where(held, 0.0, settings)   # a faulty ring ignores its setting
        realised = self.transfer(applied + stack.offset
                                 + environment.crosstalk * _neighbour_sum(stack.ci, layout)(applied), **stack.cal)
        error = realised - stack.weight
        reachable, inside = stack.reachable, stack.inside
        one = len(calibrations) == 1                    # the arrays are the chip's own, (out, in) (_per_weight)
        if one:                                         # counted as a stack of one
            reachable, inside, error, settings = reachable[None], inside[None], error[None], settings[None]
        if unused.any():
            used = ~unused
            reachable, inside, error = reachable[:, used], inside[:, used], error[:, used]
            held = None if held is None else np.broadcast_to(held, settings.shape)[:, used]
        clipping = Clipping.of_each(reachable[0].size, reachable, inside, held)
        if one:
            return [LayerMapping(settings[0], clipping[0], float(np.linalg.norm(error[0])))]
        # each chip's own settings, and its error in an array of its own (the norm's sum as for one chip alone)
        return [LayerMapping(settings[k].copy(), clipping[k], float(np.linalg.norm(error[k].copy())))
                for k in range(len(calibrations))]

    def _stack_settings(self, weight: np.ndarray, controls: np.ndarray,
                        calibrations: Sequence[Mapping[str, np.ndarray]], environment: Any,
                        layout: tuple[int, int]) -> _Stack:
        """The quantised settings of :meth:`_map_stack`, and what its report needs of how they were reached."""
        ri, ci = ring_index(weight.shape, layout)
        cal = {k: _per_weight([c[k] for c in calibrations], ri, ci) for k in self.param_units}
        faulty = [faulty_mask(c) for c in calibrations]
        held = None if all(f is None for f in faulty) else \
            _per_weight([np.zeros(layout, bool) if f is None else f for f in faulty], ri, ci)
        weight = weight.astype(np.float64)
        unused = np.isnan(weight).all(axis=1)          # padding rows of a placed layer: not programmed
        if unused.any():
            weight = np.where(unused[:, None], 1.0, weight)       # a finite stand-in: the row is held at 0
            held = unused[:, None] | (False if held is None else held)
        # the heater range, not the training range, limits what the chip can reach
        target, reachable = self.inverse(weight, controls, np.inf, **cal)     # the trained branch: controls' sign
        offset = _per_weight([c[self.offset_name] for c in calibrations], ri, ci)
        wanted, inside = self.heater_settings(target - offset, float(environment.crosstalk), ci, layout,
                                              environment.heater_range, held)
        settings, _ = quantise(wanted, environment.heater_range, environment.dac_bits)
        return _Stack(settings, weight, cal, offset, ci, held, unused, reachable, inside)

    def row_period(self, layout: tuple[int, int]) -> int | None:
        """A layer's rows are tiled over the bank's R rows: its outputs may move to rows without faulty rings."""
        return int(layout[0])

    def held_weights(self, calibration: Mapping[str, np.ndarray], layout: tuple[int, int],
                     weight_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray] | None:
        """Per weight, whether its ring is faulty and the weight such a ring gives whatever it is set to: the
        calibrated Lorentzian at its offset (setting 0; the neighbours' crosstalk, a few percent of their
        settings, left out).  None for a chip whose calibration flags no faulty ring."""
        faulty = faulty_mask(calibration)
        if faulty is None:
            return None
        ri, ci = ring_index(tuple(weight_shape), layout)
        at_rest = self.transfer(calibration[self.offset_name], **{k: calibration[k] for k in self.param_units})
        return faulty[ri, ci], at_rest[ri, ci]

    @staticmethod
    def heater_settings(goal: np.ndarray, crosstalk: float, ci: np.ndarray, layout: tuple[int, int],
                        heater_range: tuple[float, float],
                        held: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Settings h in the heater range with h + crosstalk * (h_left + h_right) = ``goal`` (the detunings wanted
        less the offsets), as :meth:`fleet_layer` applies the crosstalk, and a mask of the rings where that holds
        within the range (False: the solve wanted a setting beyond it, which is clipped).

        A ring's neighbours warm it, so pre-compensating sets it lower by what they add; a ring held at the range's
        edge spills only what it gets, and its neighbours compensate that.  ``held``: faulty rings, set to 0 (they
        ignore it) and never counted out of range.  Zero crosstalk: ``goal`` clipped.
        """
        lo, hi = heater_range
        spill = _neighbour_sum(ci, layout)
        h = solve_crosstalk(goal, crosstalk, spill, (lo, hi), held=held)
        free = goal - crosstalk * spill(h) if crosstalk else goal
        inside = (free >= lo) & (free <= hi)
        return h, inside if held is None else inside | held

    # ------------------------------------------------------------------------------------- simulation
    def fleet_layer(self, weight_shape: tuple[int, int], settings: Sequence[np.ndarray], profiles: Sequence[Any],
                    layout: tuple[int, int], device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """The static detuning of every weight (setting + offset + crosstalk) and the gathered ring truth.

        Crosstalk reaches only the neighbours in the same bank row of the same tile.
        """
        return self.fleet_programmed(self.fleet_truth(weight_shape, profiles, layout, device, dtype), settings)

    def fleet_truth(self, weight_shape: tuple[int, int], profiles: Sequence[Any], layout: tuple[int, int],
                    device: Any = "cpu", dtype: Any = None) -> dict[str, Any]:
        """What :meth:`fleet_layer` gathers from the chips' truth alone, whatever the settings: a simulated chip
        keeps it per layer shape and re-programs a layer with :meth:`fleet_programmed` alone (in-situ training
        re-programs every layer at every step; gathering was most of it)."""
        import torch

        dtype = dtype or torch.float32
        ri, ci = ring_index(weight_shape, layout)
        index = (torch.tensor(ri, device=device), torch.tensor(ci, device=device))   # copies: ri, ci are read-only

        def gathered(arrays: list[np.ndarray]) -> Any:      # (chips, R, C) per ring -> (chips, out, in) per weight
            return stacked(arrays, device, dtype)[:, index[0], index[1]]

        truth = {"ri": index[0], "ci": index[1], "device": device, "dtype": dtype,
                 "crosstalk": stacked([p.environment.crosstalk for p in profiles], device, dtype)[:, None, None],
                 "offset": gathered([p.fabrication[self.offset_name] for p in profiles]),
                 "spill": _neighbour_sum(ci, layout),
                 "drift": gathered([p.environment.drift_coefficient for p in profiles])}
        for name in self.param_units:
            truth[name] = gathered([p.fabrication[name] for p in profiles])
        return truth

    def fleet_programmed(self, truth: dict[str, Any], settings: Sequence[np.ndarray]) -> dict[str, Any]:
        """:meth:`fleet_layer`'s state from the chips' gathered ``truth`` (:meth:`fleet_truth`) and ``settings``
        (the truth's tensors are shared, never written)."""
        h = stacked(settings, truth["device"], truth["dtype"])
        state = {"ri": truth["ri"], "ci": truth["ci"],
                 "static": h + truth["offset"] + truth["crosstalk"] * truth["spill"](h), "drift": truth["drift"]}
        for name in self.param_units:
            state[name] = truth[name]
        return state

    def fleet_weights(self, state: dict[str, Any], chips: slice, conditions: ChipState) -> Any:
        """x = static + k * dT (+ shift of the weight's ring); W = Lorentzian(x; true gamma, a)."""
        x = state["drift"][chips] * conditions.temperature(2)
        x += state["static"][chips]
        if conditions.control_shift is not None:
            x += conditions.control_shift[:, state["ri"], state["ci"]]
        return self.transfer(x, **{name: state[name][chips] for name in self.param_units})

    # ------------------------------------------------------------------------------------ calibration
    sweep_calibration = True

    def device_response(self, truth: Mapping[str, np.ndarray], drift: np.ndarray, rows: np.ndarray,
                        cols: np.ndarray, controls: np.ndarray, delta_T: float) -> np.ndarray:
        """W(h) = Lorentzian(h + offset + k dT; gamma, a) of each swept ring; its neighbours sit at 0.  ``controls``:
        the sweep (points,), or what each ring really applied (rings, points: a faulty ring's held drive)."""
        rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
        x = np.atleast_2d(np.asarray(controls, np.float64)) + (truth[self.offset_name][rows, cols]
                                                               + drift[rows, cols] * float(delta_T))[:, None]
        return self.transfer(x, truth["gamma"][rows, cols][:, None], truth["a"][rows, cols][:, None])

    def fit_response(self, controls: np.ndarray, measured: np.ndarray, iterations: int = 40,
                     device: Any = "cpu") -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Least squares of W(h) = 1 - 2a / (1 + ((h + x0)/gamma)^2) per ring: x0 (the offset), gamma, a.

        Levenberg-Marquardt on all rings at once (3 x 3 normal equations each, float64 on the torch ``device``),
        started at the sweep's minimum (x0 = -h_min, a = (1 - W_min)/2) and its half-depth width; a stays in
        (0, 1].  The model is :meth:`transfer`, the physics the simulator uses.
        """
        import torch

        h = torch.as_tensor(np.asarray(controls, np.float64), device=device)[None, :]
        W = torch.as_tensor(np.asarray(measured, np.float64), device=device)
        at = torch.argmin(W, dim=1)
        x0 = -h[0, at]
        a = ((1.0 - W[torch.arange(len(W), device=device), at]) / 2.0).clamp(1e-3, 1.0)
        step = float(np.median(np.diff(np.asarray(controls, np.float64)))) if h.shape[1] > 1 else 1.0
        deep = W < (1.0 - a)[:, None]                 # inside the half-depth points
        gamma = (deep.sum(dim=1).double() * step / 2.0).clamp(min=step)
        params = torch.stack([x0, gamma, a], dim=1)
        damping = torch.full((len(W),), 1e-3, dtype=torch.float64, device=device)
        eye = torch.eye(3, dtype=torch.float64, device=device)[None]

        def residual_and_jacobian(p: Any) -> tuple[Any, Any]:
            x0_, g_, a_ = p[:, 0:1], p[:, 1:2], p[:, 2:3]
            u = (h + x0_) / g_
            L = 1.0 / (1.0 + u * u)
            r = W - self.transfer(h + x0_, g_, a_)
            dL = 4.0 * a_ * u * L * L / g_             # d(model)/d(x0); d/dgamma = -u * that; d/da = -2L
            return r, torch.stack([dL, -u * dL, -2.0 * L], dim=2)

        r, J = residual_and_jacobian(params)
        cost = (r * r).sum(dim=1)
        for _ in range(iterations):
            JTJ = torch.einsum("dpi,dpj->dij", J, J)
            JTr = torch.einsum("dpi,dp->di", J, r)
            A = JTJ + damping[:, None, None] * (eye * torch.diagonal(JTJ, dim1=1, dim2=2)[:, :, None] + 1e-12 * eye)
            trial = params + torch.linalg.solve(A, JTr[:, :, None])[:, :, 0]
            trial[:, 1] = trial[:, 1].clamp(min=1e-4)
            trial[:, 2] = trial[:, 2].clamp(1e-3, 1.0)
            r_t, J_t = residual_and_jacobian(trial)
            cost_t = (r_t * r_t).sum(dim=1)
            better = cost_t < cost
            params = torch.where(better[:, None], trial, params)
            r = torch.where(better[:, None], r_t, r)
            J = torch.where(better[:, None, None], J_t, J)
            cost = torch.where(better, cost_t, cost)
            damping = torch.where(better, damping / 3.0, damping * 4.0)
        p = params.cpu().numpy()
        fields = {self.offset_name: p[:, 0], "gamma": p[:, 1], "a": p[:, 2]}
        residual = np.sqrt(cost.cpu().numpy() / W.shape[1])
        # a fit that explains a flat trace (dead ring, resonance outside the sweep) is no calibration:
        # its residual is made infinite so that it is refused
        lo, hi = float(controls[0]), float(controls[-1])
        inside = (-p[:, 0] > lo + p[:, 1]) & (-p[:, 0] < hi - p[:, 1])
        plausible = np.isfinite(p).all(axis=1) & inside & (p[:, 2] >= MIN_EXTINCTION) & (p[:, 1] >= step)
        residual = np.where(plausible, residual, np.inf)
        return self._flag_unresponsive(np.asarray(controls, np.float64), np.asarray(measured, np.float64), fields,
                                       residual)

    def _flag_unresponsive(self, controls: np.ndarray, measured: np.ndarray, fields: dict[str, np.ndarray],
                           residual: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Rings whose trace does not move with the setting (:func:`unresponsive`) are faulty, not failed fits: they
        get the nominal gamma and a and, as offset, the detuning at which that nominal ring gives the trace's
        level (at most four sweep spans away: a level of 1 is a resonance out of the heater's reach), so the
        calibrated model realises what the ring does whatever it is set to (setting 0 = its offset); their
        residual is the trace's rms about its level."""
        flat = unresponsive(measured)
        if flat.any():                # (a chip without faulty devices records none: its profile stays as it was)
            fields["faulty"] = flat.astype(np.uint8)
            level = measured[flat].mean(axis=1)
            far = 4.0 * float(np.max(np.abs(controls)))
            held, _ = self.inverse(level, 1.0, far, **self.nominal)
            fields[self.offset_name] = fields[self.offset_name].copy()
            fields[self.offset_name][flat] = held
            for name, value in self.nominal.items():
                fields[name] = np.where(flat, value, fields[name])
            residual = residual.copy()
            residual[flat] = np.sqrt(np.mean((measured[flat] - level[:, None]) ** 2, axis=1))
        return fields, residual


#: A trace whose span is below this (weight units) does not respond to its setting, whatever the noise...
FLAT_SPAN = 0.05
#: ... or below this many times the trace's own noise (estimated from neighbouring points).
FLAT_NOISE_SPANS = 10.0


def unresponsive(measured: np.ndarray) -> np.ndarray:
    """Per swept device (rows of ``measured``), whether its trace stays flat over the sweep: a dead or stuck
    heater, or a resonance the heater range cannot reach.  Flat = the span (max - min) of the trace less its
    straight-line fit below :data:`FLAT_SPAN`, or below :data:`FLAT_NOISE_SPANS` times its noise (the median step
    between neighbouring points, as a std: a working ring's dip moves few of them), so a noisy station's flat trace
    (span about 6 sigma) is still one, and so is one on which the laser's power drifted slowly during the sweep
    (the line takes the drift; a resonance's dip is no line)."""
    measured = np.asarray(measured, np.float64)
    if measured.ndim != 2 or measured.shape[1] < 2:
        return np.zeros(len(measured), dtype=bool)
    t = np.linspace(-1.0, 1.0, measured.shape[1])
    slope = (measured - measured.mean(axis=1, keepdims=True)) @ t / (t @ t)
    rest = measured - measured.mean(axis=1, keepdims=True) - slope[:, None] * t[None, :]
    span = rest.max(axis=1) - rest.min(axis=1)
    noise = np.median(np.abs(np.diff(measured, axis=1)), axis=1) / (0.6745 * np.sqrt(2.0))
    return (span < FLAT_SPAN) | (span < FLAT_NOISE_SPANS * noise)


def _neighbour_settings(h: Any, ci: np.ndarray, layout: tuple[int, int]) -> Any:
    """Per weight, the sum of its left and right neighbours' settings in the same bank row of the same tile.

    ``h`` is (..., out, in), numpy or torch; ``ci`` the ring column of every weight (:func:`ring_index`).
    """
    return _neighbour_sum(ci, layout)(h)


def _per_weight(per_ring: list[np.ndarray], ri: np.ndarray, ci: np.ndarray) -> np.ndarray:
    """Each chip's per-ring array gathered at every weight's ring, (chips, out, in) (one gather for a stack)."""
    if len(per_ring) == 1:
        return per_ring[0][ri, ci]                 # one chip: (out, in), as the in-situ step maps it (fewer passes)
    return np.stack(per_ring)[:, ri, ci]


def _neighbour_sum(ci: np.ndarray, layout: tuple[int, int]) -> Callable[[Any], Any]:
    """:func:`_neighbour_settings` for one ``ci`` and ``layout``, made once per distinct pair (a small cache keyed
    by their values: a layer's ``ci`` is the same at every step).

    Why: the crosstalk solve calls it a dozen times per layer mapped, at every in-situ step; the masks were
    half of its cost.  A numpy layer (out, in), or a stack of them (a lot's mapping), is summed by a sparse matrix
    of ones (one product instead of five array operations; each row adds its left neighbour to 0, then its right,
    as the masked sums do: the same bits, signed zeros included), so is a CPU float64 torch stack without a
    gradient (:func:`_sparse_ready`); anything else by the masked sums."""
    ci = np.ascontiguousarray(ci, np.int64)
    return _neighbour_sum_of(ci.tobytes(), ci.shape, (int(layout[0]), int(layout[1])))


@functools.lru_cache(maxsize=32)
def _neighbour_sum_of(ci_bytes: bytes, shape: tuple[int, ...], layout: tuple[int, int]) -> Callable[[Any], Any]:
    import scipy.sparse

    ci = np.frombuffer(ci_bytes, np.int64).reshape(shape)
    in_f = ci.shape[-1]
    has_left = ci[:, 1:] > 0
    has_right = ((ci < layout[1] - 1) & (np.arange(in_f) < in_f - 1)[None, :])[:, :-1]
    index = np.arange(ci.size).reshape(ci.shape)
    rows = np.concatenate([index[:, 1:][has_left], index[:, :-1][has_right]])
    cols = np.concatenate([index[:, :-1][has_left], index[:, 1:][has_right]])
    ones = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(ci.size, ci.size))
    ones.sort_indices()                             # left (lower column) first in every row

    def neighbours(h: Any) -> Any:
        if isinstance(h, np.ndarray) and h.shape == ci.shape and h.dtype == np.float64:
            return (ones @ h.reshape(-1)).reshape(h.shape)
        if isinstance(h, np.ndarray) and h.dtype == np.float64 and h.shape[-2:] == ci.shape:
            # a stack of chips' layers (a lot's mapping): each column of the product the vector product's bits
            # (NaN payloads aside: where two NaNs meet, which one's sign is kept may differ)
            return (ones @ h.reshape(math.prod(h.shape[:-2]), ci.size).T).T.reshape(h.shape)
        if _sparse_ready(h, ci.shape):           # a chip server's program, a fleet's layers: one product too
            import torch

            flat = h.detach().reshape(-1, ci.size).numpy()
            if len(flat) == 1:                   # one chip (a served chip's program): the vector product, same bits
                return torch.from_numpy(ones @ flat[0]).reshape(h.shape)
            return torch.from_numpy((ones @ flat.T).T).reshape(h.shape)
        if isinstance(h, np.ndarray):
            where, zero, total, left, right = np.where, 0.0, np.zeros_like(h), has_left, has_right
        else:
            import torch

            left, right = torch.from_numpy(has_left).to(h.device), torch.from_numpy(has_right).to(h.device)
            where, zero, total = torch.where, h.new_zeros(()), torch.zeros_like(h)
        total[..., 1:] += where(left, h[..., :-1], zero)
        total[..., :-1] += where(right, h[..., 1:], zero)
        return total

    return neighbours


def _sparse_ready(h: Any, shape: tuple[int, ...]) -> bool:
    """Whether ``h`` is a CPU float64 torch tensor of layers shaped ``shape`` (stacked or not) that needs no
    gradient: the sparse product sums it with the same bits as the masked sums (each row: 0 + left, then + right;
    scipy adds each row's entries in that order for a stack of columns too), in one call instead of five."""
    import torch

    return (isinstance(h, torch.Tensor) and h.device.type == "cpu" and h.dtype == torch.float64
            and not h.requires_grad and h.dim() >= 2 and tuple(h.shape[-2:]) == tuple(shape))


def balanced_signs(sensitivity: np.ndarray) -> np.ndarray:
    """Signs (+-1, the shape of ``sensitivity``, each >= 0) that make every row's signed sum small: greedily, the
    largest first, each term takes the sign that brings the row's running sum towards zero (the sum ends within
    the largest term of zero, usually far closer)."""
    sensitivity = np.asarray(sensitivity, dtype=np.float64)
    order = np.argsort(-sensitivity, axis=1, kind="stable")
    rows = np.arange(sensitivity.shape[0])
    total = np.zeros(sensitivity.shape[0])
    signs = np.ones_like(sensitivity)
    for k in range(sensitivity.shape[1]):
        column = order[:, k]
        sign = np.where(total > 0, -1.0, 1.0)
        total += sign * sensitivity[rows, column]
        signs[rows, column] = sign
    return signs
