"""Simulated chips: one model, many chips, evaluated in one batched torch computation over a leading chip axis.

The platform says how a chip's settings, fabrication truth and drift act on a
layer's inputs (:meth:`~pnndeploy.platforms.base.Platform.fleet_forward`; for a
ring bank ``x = h + offset + k * dT + shift + crosstalk * (h_left + h_right)``,
``W = transfer(x; true device parameters)`` and one product per chip), with what
does not change between evaluations computed once per layer.  It is the same
torch physics that training differentiates, on the fleet's compute device (CPU
threads or a CUDA GPU).  Detector noise is drawn here, from a stream per device
and per evaluation, and every chip's products have the same shape in any batch,
so on the CPU a chip gives the same outputs, bit for bit, alone or in a fleet.

Chips are processed in chunks (:data:`CHIPS_PER_BATCH`) to bound memory; a lot
too large to hold at once is streamed through :func:`stream_accuracy`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from pnndeploy.compute import CPU, Compute
from pnndeploy.errors import PnnError
from pnndeploy.formats.deployments import Deployment
from pnndeploy.formats.onnx_io import ExportedModel
from pnndeploy.formats.profiles import DeviceProfile
from pnndeploy.platforms import platform_for
from pnndeploy.platforms.base import ChipState
from pnndeploy.platforms.faults import faulty_mask, realised_settings, resting_profile
from pnndeploy.simulation.streams import device_rng


@dataclass
class Conditions:
    """What the chips experience during one evaluation."""

    delta_T: float | np.ndarray = 0.0        # K since calibration: scalar or one per chip
    #: (chips, *platform.device_shape(array)) extra shift of every control device (ageing), control units.
    control_shift: np.ndarray | None = None
    eval_seed: int = 0                       # picks the detector-noise draw
    #: A whole-setup perturbation, {axis name: value} of ``platform.perturbation_axes`` (misalignment).
    perturbation: dict[str, float] | None = None


#: Tag of the detector-noise streams.  SeedSequence ignores trailing zeros, so without a non-zero tag
#: (eval seed 0, layer 0) would be the very stream that drew the chip's fabrication (fleet seed 0).
NOISE_STREAM = 0x6E6F6973
#: Chips evaluated together: enough to amortise per-call overhead, few enough that a batch's
#: activations stay in cache (at 512 chips, one batch of all was slower than batches of 128).
CHIPS_PER_BATCH = 128

#: Fewest chips a chunk is cut to so that a small fleet's chunks run side by side on the CPU's threads
#: (:meth:`SimulatedFleet.accuracy`).
MIN_SIDE_BY_SIDE = 16


def device_stream(device_id: str, eval_seed: int, layer: int) -> np.random.Generator:
    """The noise stream of one device, evaluation and layer (independent of the fleet around it)."""
    return device_rng(device_id, eval_seed, NOISE_STREAM, layer)


class SimulatedFleet:
    """Chips holding one deployed model, stacked along a leading chip axis, on one compute device.

    What does not change between evaluations is computed once: per layer, the
    platform's static part (for rings: setting + offset + crosstalk of every
    weight and the gathered device parameters), and the detector-noise draws of
    each evaluation seed.  An evaluation then costs the platform's drift and
    physics and one product per chip and layer, batched over chips.
    """

    def __init__(self, model: ExportedModel, profiles: Sequence[DeviceProfile],
                 deployments: Sequence[Deployment], compute: Compute = CPU) -> None:
        import torch

        if not profiles:
            raise PnnError("no devices to evaluate; name one with --device or use --fleet")
        for profile in profiles:
            if not profile.simulated:
                raise PnnError(
                    f"device {profile.device_id!r} is a real chip (its profile has no fabrication truth); "
                    "evaluating it needs a hardware backend: name one in its profile with `pnndeploy chip connect`")
        shapes = {p.shape for p in profiles}
        if len(shapes) != 1:
            raise PnnError(f"devices have different array shapes {sorted(shapes)}; evaluate them in "
                           "separate runs")
        self.model = model
        self.compute = compute
        self.device = compute.torch_device()
        self.platform = platform_for(model.platform, model.platform_params)
        self.device_ids = [p.device_id for p in profiles]
        self.array = profiles[0].shape
        self.noise_std = np.array([p.environment.detector_noise for p in profiles], np.float32)
        self._noisy = bool(np.any(self.noise_std > 0))
        self._noise_cache: dict[int, list[Any]] = {}
        self._front_cache: tuple[np.ndarray, Any] | None = None
        self._labels_cache: tuple[np.ndarray, Any, bool] | None = None
        self.shapes = [tuple(layer.weight_shape) for layer in model.layers]
        #: (chips, *device_shape) True where a device responds to its setting (None: every device of every chip):
        #: a bias programmed on top of the settings (drift compensation) does not reach a faulty one.
        self.responds = _responds(self.platform, profiles)
        to_device = lambda a: torch.from_numpy(np.asarray(a, np.float32)).to(self.device)   # noqa: E731
        self.gains = [to_device(layer.gain) for layer in model.layers]
        self.biases = [to_device(layer.bias)[:, None] for layer in model.layers]
        with compute.running():
            resting = [resting_profile(self.platform, p) for p in profiles]    # faulty devices folded in, once
            self.layers: list[dict[str, Any]] = [self._layer(k, shape, resting, deployments)
                                                 for k, shape in enumerate(self.shapes)]

    def _layer(self, k: int, shape: tuple[int, int], profiles: Sequence[DeviceProfile],
               deployments: Sequence[Deployment]) -> dict[str, Any]:
        """The platform's static state of layer ``k`` for every chip (``profiles`` at rest, :func:`resting_profile`),
        from what each chip's channels really apply (nothing on a faulty device).  Where some chip's mapping moved
        the layer's outputs to other rows, every chip's settings are padded to the same rows and ``rows`` (chips,
        out) says where each output sits."""
        import torch

        layers = [d.layers[k] for d in deployments]
        placed = [layer for layer in layers if layer.rows is not None]
        physical = (max(layer.settings.shape[0] for layer in placed), shape[1]) if placed else shape
        settings, rows = [], []
        for layer, profile in zip(layers, profiles):
            s = layer.settings
            if placed and s.shape[0] < physical[0]:
                s = np.concatenate([s, np.zeros((physical[0] - s.shape[0], *s.shape[1:]))])
            settings.append(realised_settings(self.platform, s, profile.fabrication, self.array))
            rows.append(np.arange(shape[0]) if layer.rows is None else layer.rows)
        state = self.platform.fleet_layer(physical, settings, profiles, self.array, self.device)
        if placed:
            state["rows"] = torch.from_numpy(np.stack(rows).astype(np.int64)).to(self.device)
        return state

    def __len__(self) -> int:
        return len(self.device_ids)

    def _noise(self, eval_seed: int) -> list[Any] | None:
        """Detector noise of every chip and layer for one evaluation seed (drawn once, then reused)."""
        import torch

        if not self._noisy:
            return None
        if eval_seed not in self._noise_cache:
            if len(self._noise_cache) >= 16:
                self._noise_cache.pop(next(iter(self._noise_cache)))
            params = self.model.platform_params
            draws = []
            for k, shape in enumerate(self.shapes):
                noise_shape = self.platform.noise_shape(shape, params)
                std = self.noise_std.reshape(-1, *([1] * len(noise_shape)))
                draw = std * np.stack([device_stream(name, eval_seed, k).standard_normal(noise_shape, dtype=np.float32)
                                       for name in self.device_ids])
                draws.append(torch.from_numpy(draw).to(self.device))
            self._noise_cache[eval_seed] = draws
        return self._noise_cache[eval_seed]

    def _features(self, X_scaled: np.ndarray) -> Any:
        """The first on-chip layer's inputs (in, samples) on the compute device: the scaled inputs through the
        digital front end if any (the same on every chip), kept for the last input array seen."""
        import torch

        if self._front_cache is None or self._front_cache[0] is not X_scaled:
            features = self.model.features(X_scaled) if self.model.digital is not None else X_scaled
            XT = np.ascontiguousarray(np.asarray(features, dtype=np.float32).T)
            self._front_cache = (X_scaled, torch.from_numpy(XT).to(self.device))
        return self._front_cache[1]

    def _labels(self, y: np.ndarray) -> tuple[Any, bool]:
        """The labels on the compute device and whether they are class indices, kept for the last array seen
        (an audit scores the same labels at every point of its sweeps)."""
        import torch

        if self._labels_cache is None or self._labels_cache[0] is not y:
            labels = torch.from_numpy(np.asarray(y)).to(self.device)
            classes = are_class_indices(labels, self.shapes[-1][0]) if labels.ndim == 1 else False
            self._labels_cache = (y, labels, classes)
        return self._labels_cache[1], self._labels_cache[2]

    def chip_state(self, chips: slice, conditions: Conditions) -> ChipState:
        """``conditions`` for the chips in ``chips`` as tensors on the compute device."""
        import torch

        if conditions.perturbation and not self.platform.perturbation_axes:
            raise PnnError(f"{self.platform.name} chips have no whole-setup perturbation "
                           f"({', '.join(sorted(conditions.perturbation))}); leave Conditions.perturbation empty")
        dT = np.asarray(conditions.delta_T, dtype=np.float32)
        delta_T = torch.tensor(float(dT), device=self.device) if dT.ndim == 0 else \
            torch.from_numpy(np.ascontiguousarray(dT[chips])).to(self.device)
        shift = conditions.control_shift
        if shift is not None:
            shift = torch.as_tensor(shift[chips]).to(device=self.device, dtype=torch.float32)
        return ChipState(delta_T, shift, conditions.perturbation or None)

    def realised_weights(self, k: int, chips: slice, conditions: Conditions) -> np.ndarray:
        """Weights of layer ``k`` as the chips in ``chips`` realise them, (chips, out, in), detector noise included
        (linear platforms only: a non-linear layer has no weight matrix)."""
        import torch

        if not self.platform.linear:
            raise PnnError(f"{self.platform.name} layers are not a weight matrix; use scores()")
        with torch.inference_mode(), self.compute.running():
            W = self.platform.logical_weights(self.layers[k], chips, self.chip_state(chips, conditions))
            noise = self._noise(conditions.eval_seed)
            if noise is not None:
                W += noise[k][chips]
            return W.cpu().numpy()

    def scores_tensor(self, X_scaled: np.ndarray, conditions: Conditions, chips: slice) -> Any:
        """(chips, classes, samples) outputs of the chips in ``chips`` as a torch tensor on the compute device.

        Samples are on the fast axis so that every product is a plain contiguous GEMM per chip, of the same
        shape however many chips are evaluated with it: one (chips*out, in) product for the shared first layer
        was faster, but the kernel is picked by size, so a chip's outputs then changed in the last bits with the
        size of the fleet around it.
        """
        import torch

        with torch.inference_mode(), self.compute.running():
            state = self.chip_state(chips, conditions)
            noise = self._noise(conditions.eval_seed)
            h = self._features(X_scaled)
            for k in range(len(self.shapes)):
                h = self.platform.fleet_forward(self.layers[k], chips, h, state,
                                                None if noise is None else noise[k][chips], self.gains[k])
                h += self.biases[k]
                if k < len(self.shapes) - 1:
                    h.clamp_(min=0.0)
            return h

    def scores(self, X_scaled: np.ndarray, conditions: Conditions, chips: slice) -> np.ndarray:
        """(chips, classes, samples) float32 outputs of the chips in ``chips`` (numpy)."""
        return self.scores_tensor(X_scaled, conditions, chips).cpu().numpy()

    def logits(self, X_scaled: np.ndarray, conditions: Conditions, chips: slice) -> np.ndarray:
        """(chips, samples, classes) logits of the chips in ``chips`` (a view of :meth:`scores`)."""
        return self.scores(X_scaled, conditions, chips).transpose(0, 2, 1)

    def accuracy(self, X_scaled: np.ndarray, y: np.ndarray, conditions: Conditions | None = None,
                 chunk: int = CHIPS_PER_BATCH, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Accuracy of every chip, (chips,) float64; ``progress(n)`` after each chunk of n chips.

        Where the platform says so (``chunks_side_by_side``: a mesh's compiled loop holds no interpreter lock), on
        the CPU with several threads, the chunks are evaluated side by side, each on one intra-op thread
        (:func:`pnndeploy.threads.each_on_one_thread`), a small fleet cut into one chunk a thread: a chip's outputs
        are the same bits on one thread or all, and torch's own threads mostly spun beside the loop (its OpenMP
        workers wait busily for milliseconds after every parallel op).  ``progress`` is then called from those
        threads, one call at a time, in the order the chunks finish, and a fleet of fewer chunks than threads is
        cut into one even chunk a thread (``progress`` then sees those)."""
        import torch

        from pnndeploy.threads import each_on_one_thread

        conditions = conditions or Conditions()
        out = np.empty(len(self), dtype=np.float64)
        threads = self._side_by_side(chunk, X_scaled.shape[0])
        if threads > 1 and len(self) < threads * chunk:      # fewer chunks than threads: one even chunk a thread
            parts = max(1, min(threads, len(self) // MIN_SIDE_BY_SIDE))
            chunk = -(-len(self) // parts)
        pieces = [slice(start, min(start + chunk, len(self))) for start in range(0, len(self), chunk)]
        lock = threading.Lock()
        with torch.inference_mode(), self.compute.running():
            labels, classes = self._labels(y)
            self._features(X_scaled)                   # shared by the pieces: made before they run
            self._noise(conditions.eval_seed)

            def evaluate(chips: slice) -> None:
                scores = self.scores_tensor(X_scaled, conditions, chips)
                out[chips] = correct_fraction(scores, labels, classes).cpu().numpy()
                if progress is not None:
                    with lock:
                        progress(chips.stop - chips.start)

            if threads > 1 and len(pieces) > 1:
                each_on_one_thread(evaluate, pieces, threads)
            else:
                for chips in pieces:
                    evaluate(chips)
        return out

    def _side_by_side(self, chunk: int, samples: int) -> int:
        """Threads whose chunks :meth:`accuracy` runs side by side: the compute's CPU threads where the platform
        gains by it, as many as :data:`pnndeploy.threads.PIECES_BYTES` holds chunks of ``chunk`` chips (each
        holds its activations; :meth:`Platform.fleet_chip_bytes`), else 1."""
        from pnndeploy.threads import threads_within_memory

        if not self.platform.chunks_side_by_side or self.compute.is_cuda:
            return 1
        params = self.model.platform_params
        per_chip = sum(self.platform.fleet_chip_bytes(shape, samples, params) for shape in self.shapes)
        return threads_within_memory(self.compute.cpu_threads(), chunk * per_chip)


def _responds(platform: Any, profiles: Sequence[DeviceProfile]) -> np.ndarray | None:
    """Per chip and device, whether it responds to its setting (the truth's faults); None when all do."""
    masks = [faulty_mask(p.fabrication) for p in profiles]
    if all(m is None for m in masks):
        return None
    shape = platform.device_shape(profiles[0].shape)
    return np.stack([np.ones(shape, dtype=bool) if m is None else ~m for m in masks])


def correct_fraction(scores: Any, y: Any, labels_are_classes: bool | None = None) -> Any:
    """Per chip, the fraction of samples whose top class is ``y``: ``(scores.argmax(1) == y).mean(1)``, float64.

    ``scores`` is (chips, classes, samples) and ``y`` (samples,): numpy arrays (numpy's definition) or torch
    tensors on the compute device.  torch's argmax over the short, strided class axis cost more than every
    product of the evaluation; where every sample has one maximum (no tie, no NaN: "the first maximum" is then
    the maximum) a sample is right when its label's score is that maximum, a few vector passes: in numpy for
    float32 and float64 scores on the CPU (:func:`_label_scores_the_maximum`), else in torch for more than
    :data:`FEW_CHIPS` chips.  Ties, NaN, labels that are not class indices and a few chips on another device are
    left to torch's ``max(dim=1)``, which gives argmax's first-maximum index.  Labels that are not one per sample
    are refused.  ``labels_are_classes``: whether ``y`` holds integer class indices (checked here when None).
    """
    if isinstance(scores, np.ndarray):
        return (scores.argmax(axis=1) == np.asarray(y)).mean(axis=1)
    import torch

    chips, classes, samples = scores.shape
    if y.ndim != 1 or len(y) != samples:
        raise ValueError(f"labels of shape {tuple(y.shape)} for {samples} samples")
    if labels_are_classes is None:
        labels_are_classes = are_class_indices(y, classes)
    hit = None
    if labels_are_classes and classes and scores.device.type == "cpu" and scores.dtype in (torch.float32,
                                                                                          torch.float64):
        found = _label_scores_the_maximum(scores.detach().numpy(), y.detach().cpu().numpy())
        hit = None if found is None else torch.from_numpy(found)
    elif labels_are_classes and chips > FEW_CHIPS:
        top = scores.amax(dim=1)
        if not bool(((scores == top[:, None]).sum(dim=1) != 1).any()):
            hit = scores.gather(1, y.long().expand(chips, 1, samples))[:, 0] == top
    if hit is None:
        hit = scores.max(dim=1).indices == y
    return hit.sum(dim=1).double() / samples if samples else hit.new_full((chips,), float("nan"), dtype=torch.float64)


def _label_scores_the_maximum(scores: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """(chips, samples): whether each sample's label (a class index) scores the maximum over classes, where every
    sample has exactly one maximum (then the same as argmax == y); None where one has a tie or a NaN.

    Why numpy on the CPU: torch's reductions over the short, strided class axis, and its comparisons, ran at a
    few hundred MB/s there (a 128-chip chunk's count took 1.1-1.7 ms on one thread, as much as a tenth of its
    evaluation); this takes 0.64 ms (0.32 at 64 chips against 0.84-0.91; on two threads 0.47-0.65 against
    0.95-1.36)."""
    if y.size and (y.min() < 0 or y.max() >= scores.shape[1]):
        return None                                 # not class indices, whatever the caller said (numpy would wrap -1)
    top = scores.max(axis=1)                        # NaN wherever a sample has one
    if np.isnan(top).any() or np.count_nonzero(scores == top[:, None, :]) != top.size:
        return None                                 # (no NaN: every sample has a maximum; the count says one each)
    return scores[:, y.astype(np.intp), np.arange(scores.shape[2])] == top


#: Up to this many chips on a device other than the CPU :func:`correct_fraction` takes torch's max over classes
#: directly (measured faster there on the CPU, before the CPU's count moved to numpy).
FEW_CHIPS = 32


def are_class_indices(y: Any, classes: int) -> bool:
    """True when the torch labels ``y`` are integers in 0 .. classes - 1 (and there is at least one)."""
    import torch

    return bool(len(y) > 0 and not y.dtype.is_floating_point and y.dtype != torch.bool and int(y.min()) >= 0
                and int(y.max()) < classes)


def stream_accuracy(model: ExportedModel, chips: Iterable[tuple[DeviceProfile, Deployment]], X_scaled: np.ndarray,
                    y: np.ndarray, conditions: Conditions | None = None, compute: Compute = CPU,
                    chunk: int = CHIPS_PER_BATCH, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Accuracy of every chip of a lot too large to hold at once: chips are taken from ``chips`` (an iterator
    of (profile, deployment), e.g. generated and mapped on the fly) ``chunk`` at a time, evaluated, and dropped.

    Memory stays that of one chunk whatever the lot's size; the result is the one a single
    :class:`SimulatedFleet` of every chip would give (a chip's outputs do not depend on the chips around it).
    ``conditions.delta_T`` and ``control_shift``, when per chip, are for the whole lot.
    """
    conditions = conditions or Conditions()
    parts: list[np.ndarray] = []
    batch: list[tuple[DeviceProfile, Deployment]] = []
    done = 0
    previous: SimulatedFleet | None = None

    def flush() -> None:
        nonlocal done, previous
        fleet = SimulatedFleet(model, [p for p, _ in batch], [d for _, d in batch], compute)
        if previous is not None:        # the front end's features and the labels, computed once for the lot
            fleet._front_cache, fleet._labels_cache = previous._front_cache, previous._labels_cache
        parts.append(fleet.accuracy(X_scaled, y, _slice_conditions(conditions, done, len(batch)), chunk=chunk))
        previous = fleet
        done += len(batch)
        if progress is not None:
            progress(len(batch))
        batch.clear()

    for pair in chips:
        batch.append(pair)
        if len(batch) == chunk:
            flush()
    if batch:
        flush()
    return np.concatenate(parts) if parts else np.empty(0)


def _slice_conditions(conditions: Conditions, start: int, count: int) -> Conditions:
    """The per-chip parts of ``conditions`` for chips ``start .. start + count`` of a streamed lot."""
    dT = np.asarray(conditions.delta_T)
    shift = conditions.control_shift
    return Conditions(delta_T=dT if dT.ndim == 0 else dT[start:start + count],
                      control_shift=None if shift is None else shift[start:start + count],
                      eval_seed=conditions.eval_seed, perturbation=conditions.perturbation)
