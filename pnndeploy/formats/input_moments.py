"""What each on-chip layer's inputs look like, recorded in the model file for the mapper.

When a device cannot give the weight a model wants (a faulty ring holds one weight whatever it is set to), the
other weights of its row can make up for it, but only knowing how the inputs move together: the error of output
i is ``sum_j dW_ij x_j``, whose mean square is ``dW_i M dW_i^T`` with ``M = E[x x^T]`` the second moment of the
layer's inputs (:mod:`pnndeploy.deploy.fault_compensation`).  Training knows M (its data through the nominal
model); a lab that maps the model a year later, on a chip with a dead heater, does not have the data.  So the model
file keeps M per on-chip layer (metadata ``input_moments``), for layers of at most :data:`MAX_MOMENT_INPUTS`
inputs (the matrix is inputs^2 numbers of JSON).  A file without it (older files, wider layers) maps faulty
devices without compensation.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pnndeploy.errors import ModelFileError

#: Widest layer whose input moment the file records (256 inputs: 65,536 numbers).
MAX_MOMENT_INPUTS = 256
#: Training samples the moments are measured on (the first of the training set, as scaled for the model).
MAX_MOMENT_SAMPLES = 4096


def measure_input_moments(layers: Sequence[Any], platform: Any, params: Mapping[str, Any],
                          features: np.ndarray) -> dict[str, np.ndarray]:
    """E[x x^T] of every on-chip layer's inputs (float64), the model's nominal outputs of the layer before passed
    on (gain, bias, ReLU between layers), from ``features`` (what the first on-chip layer receives)."""
    h = np.asarray(features, np.float64)[:MAX_MOMENT_SAMPLES]
    moments: dict[str, np.ndarray] = {}
    for k, layer in enumerate(layers):
        if layer.shape[1] <= MAX_MOMENT_INPUTS and len(h):
            moments[layer.name] = h.T @ h / len(h)
        h = platform.nominal_outputs(layer.weight, layer.controls, layer.shape, h, params) * layer.gain + layer.bias
        if k < len(layers) - 1:
            h = np.maximum(h, 0.0)
    return moments


def moments_json(moments: Mapping[str, np.ndarray], samples: int) -> dict[str, Any]:
    """The metadata value: per layer, the samples it was measured on and the matrix (float32-exact numbers)."""
    return {name: {"samples": int(samples),
                   "second_moment": np.asarray(m, np.float32).astype(np.float64).tolist()}
            for name, m in moments.items()}


def parse_input_moments(where: str, value: Any, layers: Sequence[Any]) -> dict[str, np.ndarray]:
    """The recorded moments of a model file (``{}`` when it records none), each checked against its layer: a
    square matrix of the layer's inputs, finite, symmetric and positive semi-definite (what makes every row's
    ridge-regularised solve well posed).  Anything else is the file's error, in one line."""
    if value is None:
        return {}
    fix = "the file was edited or corrupted; re-export it with `pnndeploy train`"
    if not isinstance(value, dict):
        raise ModelFileError(f"{where}: metadata pnndeploy.input_moments is not a JSON object; {fix}")
    inputs = {layer.name: layer.shape[1] for layer in layers}
    out: dict[str, np.ndarray] = {}
    for name, entry in value.items():
        n = inputs.get(name)
        if n is None:
            raise ModelFileError(f"{where}: input_moments names no on-chip layer of the model; {fix}")
        if n > MAX_MOMENT_INPUTS:        # pnndeploy never records one: refused before its numbers are converted
            raise ModelFileError(f"{where}: input_moments of layer {name!r} ({n} inputs) is wider than the "
                                 f"{MAX_MOMENT_INPUTS} inputs a model file records; {fix}")
        try:
            m = np.asarray(entry["second_moment"], dtype=np.float64)
        except (TypeError, KeyError, ValueError, OverflowError):
            raise ModelFileError(f"{where}: input_moments of layer {name!r} is not a matrix of numbers; {fix}") from None
        scale = max(1.0, float(np.abs(m).max())) if m.size and np.all(np.isfinite(m)) else 1.0
        if m.shape != (n, n) or not np.all(np.isfinite(m)) \
                or not np.allclose(m, m.T, rtol=1e-5, atol=1e-6 * scale) \
                or float(np.linalg.eigvalsh((m + m.T) / 2).min()) < -1e-5 * scale:
            raise ModelFileError(f"{where}: input_moments of layer {name!r} is not a finite, symmetric, positive "
                                 f"semi-definite {n} x {n} matrix (a second moment is one); {fix}")
        out[name] = m
    return out
