"""The statistics prediction health is judged with: the population stability index of observed
counts against the manifest's baseline shares, and a percentile of a binned confidence."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

PSI_FLOOR = 1e-4
"""Shares are floored at this before the PSI's logarithm, so an empty bin does not make it infinite."""


def psi(actual_counts: Sequence[float], expected_shares: Sequence[float]) -> float | None:
    """Population stability index of observed counts against expected shares (None: no data).

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.
    """
    actual = np.asarray(actual_counts, dtype=np.float64)
    expected = np.asarray(expected_shares, dtype=np.float64)
    if actual.sum() <= 0 or expected.sum() <= 0:
        return None
    size = max(len(actual), len(expected))
    actual = np.pad(actual, (0, size - len(actual)))
    expected = np.pad(expected, (0, size - len(expected)))
    a = np.maximum(actual / actual.sum(), PSI_FLOOR)
    e = np.maximum(expected / expected.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def confidence_p05(counts: list[int], bins: int) -> float | None:
    """The lower edge of the confidence bin (of ``bins``) that holds the 5th percentile."""
    total = sum(counts)
    if total == 0:
        return None
    rank = max(1, math.ceil(0.05 * total))
    index = int(np.searchsorted(np.cumsum(counts), rank))
    return index / bins
