"""Statistics for accuracies measured on finite test sets and finite fleets."""

from __future__ import annotations

import math


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
