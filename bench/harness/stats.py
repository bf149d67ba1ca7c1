"""Summaries of repeated measurements: median and spread; ratios of medians.

Owns: `summary()` (median, min, max, n, spread = (max - min) / median) and `ratio()`.
Pure functions over numbers; knows nothing about subjects or sections.
"""

from __future__ import annotations

import statistics


def summary(values: list[float | None]) -> dict | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    med = statistics.median(vals)
    return {
        "median": med,
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "spread_pct": (max(vals) - min(vals)) / med * 100 if med else None,
    }


def median(s: dict | None) -> float | None:
    return s["median"] if s else None


def ratio(a: dict | None, b: dict | None) -> float | None:
    """median(a) / median(b), or None when either is missing or b is zero."""
    ma, mb = median(a), median(b)
    if ma is None or not mb:
        return None
    return ma / mb


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (p in 0..100)."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]
