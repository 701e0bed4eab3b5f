"""Statistics for accuracies measured on finite test sets and finite fleets."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def wilson_interval(accuracy: float, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion measured on ``n`` samples."""
    if n <= 0:
        return (0.0, 1.0)
    p = float(accuracy)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if p <= 0.0 else max(0.0, centre - half)
    hi = 1.0 if p >= 1.0 else min(1.0, centre + half)
    return (lo, hi)


def fleet_summary(devices: Sequence[str], accuracies: Sequence[float], threshold: float) -> dict:
    """Mean, spread, worst chip and yield (fraction of chips at or above ``threshold``)."""
    acc = np.asarray(accuracies, dtype=np.float64)
    worst = int(np.argmin(acc))
    return {
        "count": int(acc.size),
        "mean": float(acc.mean()),
        "std": float(acc.std(ddof=1)) if acc.size > 1 else 0.0,
        "min": float(acc.min()),
        "p5": float(np.percentile(acc, 5)),
        "median": float(np.median(acc)),
        "worst_device": devices[worst],
        "threshold": float(threshold),
        "yield": float((acc >= threshold).mean()),
    }
