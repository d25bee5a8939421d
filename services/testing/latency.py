"""The percentile every benchmark reports, defined once so their figures
compare: nearest rank, the value at index int(q * n) of the sorted sample
(the last one for q near 1)."""

from __future__ import annotations

from typing import Sequence


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
