"""Mapping around faulty devices: the working weights of a row make up for the one that is stuck.

A faulty ring gives one weight ``v`` whatever it is set to, so output i of its layer is off by
``(v - w_ij) x_j`` for every input.  The other weights of row i can cancel most of that: over the inputs the
model will see, the row's output error ``e = dW_i . x`` has mean square ``dW_i M dW_i^T`` with ``M = E[x x^T]``
(the layer's input second moment, which the model file records: :mod:`pnndeploy.formats.input_moments`).  With
the held entries F fixed at their error ``d_F = v_F - w_F``, the least mean square over the free entries R is

    M_RR d_R = -M_RF d_F,

one small solve per row that has a faulty device (a ridge of :data:`RIDGE` times the mean diagonal keeps
inputs that never vary, a digit's blank border, from asking for any correction).  The mean is part of M (it is
not centred), so a constant offset of the row is cancelled as well.  What cannot be cancelled (inputs not
explained by the others) stays in the output: the mapper reports the faulty devices, and `transfer` what they
cost.

Before that, where the layer's rows are tiled over a bank's rows (:meth:`~pnndeploy.platforms.base.LinearPlatform.
row_period`), the outputs are placed (:func:`place_rows`): a layer of 10 outputs on a bank of 16 rows may use any
10 of them, and one of 128 outputs hosts its least important outputs on the rows with faulty rings.  Which row an
output sits on is digital bookkeeping (the detector read for it), so it costs nothing on the chip; the deployment
records it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: Ridge of the row solve, relative to the mean of M's diagonal.
RIDGE = 1e-3


def compensate_held(weight: np.ndarray, held: np.ndarray, values: np.ndarray,
                    moment: np.ndarray | None) -> np.ndarray:
    """Target weights (out, in) for a layer whose ``held`` weights are stuck at ``values``: the held entries at
    their values, the others of each such row moved to cancel their error over inputs of second moment
    ``moment`` (in, in).  Without a moment, the model's weights (no compensation)."""
    target = np.asarray(weight, np.float64).copy()
    held = np.asarray(held, dtype=bool)
    if moment is None or not held.any():
        return target
    M = np.asarray(moment, np.float64)
    values = np.asarray(values, np.float64)
    ridge = RIDGE * max(float(np.mean(np.diag(M))), 1e-12)
    for i in np.flatnonzero(held.any(axis=1) & np.isfinite(target).all(axis=1)):    # (NaN: a padding row)
        fixed = held[i]
        free = ~fixed
        if not free.any():
            continue
        A = M[np.ix_(free, free)] + ridge * np.eye(int(free.sum()))
        target[i, free] += np.linalg.solve(A, -M[np.ix_(free, fixed)] @ (values[i, fixed] - target[i, fixed]))
        target[i, fixed] = values[i, fixed]
    return target


def output_importance(layers: Sequence[Any], moments: Mapping[str, np.ndarray], k: int) -> np.ndarray:
    """How much each output of layer ``k`` matters downstream: every class alike for the last layer; for a hidden
    one, E[h_i^2] (the next layer's input moment, 1 when not recorded) times the squared gained weights it feeds."""
    out = layers[k].shape[0]
    if k == len(layers) - 1:
        return np.ones(out)
    following = layers[k + 1]
    moment = moments.get(following.name)
    energy = np.diag(moment) if moment is not None else np.ones(out)
    if following.weight is None:
        return energy
    gained = np.asarray(following.weight, np.float64) * np.asarray(following.gain, np.float64)[:, None]
    return energy * (gained ** 2).sum(axis=0)


def place_rows(held: np.ndarray, moment: np.ndarray | None, importance: np.ndarray) -> np.ndarray | None:
    """Rows for a layer's outputs among the ``held.shape[0]`` rows of devices it may use: the least important
    outputs on the rows whose faulty devices would cost most (their count, each weighted by its input's mean
    square), the most important on rows without any.  None when that is the plain order (output i on row i)."""
    out = len(importance)
    energy = np.ones(held.shape[1]) if moment is None else np.maximum(np.diag(moment), 0.0)
    badness = (np.asarray(held, np.float64) * energy[None, :]).sum(axis=1)
    best_first = np.argsort(badness, kind="stable")
    rows = np.empty(out, dtype=np.int64)
    rows[np.argsort(-np.asarray(importance, np.float64), kind="stable")] = best_first[:out]
    if np.array_equal(rows, np.arange(out)) or not badness.any():
        return None
    return rows


def row_error(weight: np.ndarray, realised: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """Per output, the rms error sqrt(dW_i M dW_i^T) of a layer realising ``realised`` for ``weight``, over inputs
    of second moment ``moment``: what compensation minimises (tests and reports)."""
    d = np.asarray(realised, np.float64) - np.asarray(weight, np.float64)
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, np.asarray(moment, np.float64), d), 0.0))
