"""The statistics prediction health is judged with: the population stability index of observed
counts against the manifest's baseline shares, a percentile of a binned confidence, and the
input-feature and output tests of drift (``input_drift``, ``output_drift``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from protocol.features import bin_of
from protocol.manifest import FeatureStats

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


# Input-feature and output drift as tests: each window's evidence is a significance, -log10 of
# a p-value corrected (Bonferroni) for the number of tests, so one threshold fits a model of 10
# features and one of 64. The p-values assume normal means; at small windows and skewed features
# they are nominal, which is why the fleet's thresholds were chosen from measured false alarms
# (benchmarks/health.py), not from the nominal level.

MIN_INPUT_SAMPLES = 20
"""Fewer instances in a window: no input test (a mean of a handful of skewed values is no evidence)."""
MIN_PER_CLASS = 2
"""The output test needs this many predictions per output class (fewer: no test); chosen with
the fleet's threshold from measured clean windows (``benchmarks/health.py``)."""
MIN_BIN_EXPECTED = 2.0
"""A feature's bin test runs only when every bin the baseline fills expects this many of the window."""
MAX_MODE_SHARE = 0.9
"""Features at one value in this share of the baseline are left out of the mean test (mostly
constant pixels: their means count rare events, not normal); the stuck test keeps them."""
STUCK_LEVEL = 4.0
"""A constant feature counts as stuck when its corrected significance is at least this (p < 1e-4)."""
MAX_SIGNIFICANCE = 99.0


def _two_sided_log10(z: float) -> float:
    """-log10 of the two-sided normal tail beyond |z|, exact in the tail where erfc underflows."""
    x = abs(z) / math.sqrt(2.0)
    if x < 25.0:
        return -math.log10(max(math.erfc(x), 1e-300))
    return (x * x + math.log(x * math.sqrt(math.pi))) / math.log(10.0)


def _corrected(log10_p: float, tests: int) -> float:
    """Significance after Bonferroni over ``tests``: -log10(min(1, tests * p)), capped."""
    return min(MAX_SIGNIFICANCE, max(0.0, log10_p - math.log10(max(1, tests))))


FOLD_ROWS = 256
"""Instances a window holds as they came before folding them into its counts at once: a request
then costs a list append, and the binning runs vectorised over many rows (bounded memory)."""


@dataclass(frozen=True)
class FeatureBatch:
    """One request's first input as summary features (``protocol.features``), with the baseline's
    means and padded decile edges it is judged against (the serving model's, shared, not copied)."""

    summary: npt.NDArray[np.float64]
    mean: npt.NDArray[np.float64]
    edges: npt.NDArray[np.float64]


@dataclass
class FeatureWindow:
    """One window's summary features: their range (a stuck feature has none) and decile-bin counts."""

    mean: npt.NDArray[np.float64]
    edges: npt.NDArray[np.float64]
    low: npt.NDArray[np.float64]
    high: npt.NDArray[np.float64]
    bins: npt.NDArray[np.int64]
    count: int = 0
    pending: list[npt.NDArray[np.float64]] = field(default_factory=list)
    pending_rows: int = 0

    @classmethod
    def of(cls, batch: FeatureBatch) -> FeatureWindow:
        size, width = batch.edges.shape[0], batch.edges.shape[1] + 1
        window = cls(
            batch.mean,
            batch.edges,
            np.full(size, np.inf),
            np.full(size, -np.inf),
            np.zeros((size, width), np.int64),
        )
        window.add(batch)
        return window

    def fits(self, batch: FeatureBatch) -> bool:
        """Judged against the same baseline (the model did not change mid-window)."""
        return batch.edges is self.edges and batch.mean is self.mean

    def add(self, batch: FeatureBatch) -> None:
        self.pending.append(batch.summary)
        self.pending_rows += len(batch.summary)
        self.count += len(batch.summary)
        if self.pending_rows >= FOLD_ROWS:
            self.fold()

    def fold(self) -> None:
        """Count the held rows: range and bins."""
        if not self.pending:
            return
        rows = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending, self.pending_rows = [], 0
        centred = rows - self.mean
        np.minimum(self.low, centred.min(axis=0), out=self.low)
        np.maximum(self.high, centred.max(axis=0), out=self.high)
        size, width = self.bins.shape
        flat = (np.arange(size) * width + bin_of(rows, self.edges)).ravel()
        self.bins += np.bincount(flat, minlength=size * width).reshape(size, width)


@dataclass(frozen=True)
class InputDrift:
    significance: float
    """Corrected -log10 p of the strongest test: a feature's mean or its decile bins, a stuck
    value, or all means jointly."""
    feature: int | None
    """The summary feature of that test (None: the joint test)."""
    stuck: int
    """Features constant over the window where the baseline makes that improbable (p < 1e-4, corrected)."""


def _bin_tests(window: FeatureWindow, stats: FeatureStats, big_n: int) -> list[float]:
    """Per feature, -log10 p of a two-sample chi-square of its decile-bin counts against the
    baseline's (0 where the window is too small for the feature's bins)."""
    n = window.count
    results = []
    for index, shares in enumerate(stats.shares):
        expected = np.asarray(shares)
        used = expected > 0
        if used.sum() < 2 or n * expected[used].min() < MIN_BIN_EXPECTED:
            results.append(0.0)
            continue
        observed = window.bins[index, : len(expected)].astype(np.float64)
        base = expected * big_n
        pooled = (observed + base) / (n + big_n)
        keep = pooled > 0
        p = pooled[keep]
        statistic = float(
            np.sum((observed[keep] - n * p) ** 2 / (n * p) + (base[keep] - big_n * p) ** 2 / (big_n * p))
        )
        results.append(_chi2_log10_sf(statistic, int(keep.sum()) - 1))
    return results


def _bin_means(window: FeatureWindow, stats: FeatureStats) -> tuple[npt.NDArray[np.float64], int]:
    """Per feature, the window's mean decile-bin index as a z-score against the baseline's (the
    baseline's error included), and how many features have a spread to score against."""
    size, width = window.bins.shape
    shares = np.zeros((size, width))
    for row, values in enumerate(stats.shares):
        shares[row, : len(values)] = values[:width]
    index = np.arange(width, dtype=np.float64)
    expected = shares @ index
    std = np.sqrt(np.maximum(shares @ index**2 - expected**2, 0.0))
    observed = (window.bins @ index) / window.count
    return (observed - expected) / np.where(std > 0, std, 1.0), int(np.count_nonzero(std > 0))


def _joint_test(z: npt.NDArray[np.float64], stats: FeatureStats) -> float | None:
    """-log10 p of Hotelling's T² on every feature's bin-index z at once: it sees a small shift of
    many correlated features that no single feature shows. None without the baseline's factor."""
    if stats.precision_cholesky is None:
        return None
    size = len(stats.mean)
    lower = np.zeros((size, size))
    lower[np.tril_indices(size)] = stats.precision_cholesky
    whitened = lower.T @ z
    dimensions = int(np.count_nonzero(np.diag(lower)))
    return _chi2_log10_sf(float(whitened @ whitened), max(1, dimensions))


def input_drift(window: FeatureWindow, stats: FeatureStats, baseline_samples: int) -> InputDrift | None:
    """Per-feature tests of one window against the baseline's feature statistics (None: too few
    instances, or a window that does not match the statistics)."""
    window.fold()
    n = window.count
    mean = np.asarray(stats.mean)
    if n < MIN_INPUT_SAMPLES or window.low.shape != mean.shape:
        return None
    std, mode, share = np.asarray(stats.std), np.asarray(stats.mode), np.asarray(stats.mode_share)
    big_n = max(baseline_samples, 2)
    varying = std > 0
    tested = varying & (share < MAX_MODE_SHARE)
    # Means of decile-bin indices, not of values: a rank test, which one outlier of a heavy-tailed
    # feature cannot fire. The baseline's mean is an estimate from big_n samples: its error is
    # part of the difference.
    z_bins, _ = _bin_means(window, stats)
    z_mean = z_bins * math.sqrt(1.0 / (1.0 / n + 1.0 / big_n))
    binned = _bin_tests(window, stats, big_n)
    # Constant over the window: as likely as the baseline's share of that value to the n-th power
    # (a value that is not the mode is at most min(share, 1 - share) likely); add-one smoothing.
    constant = varying & (window.high - window.low <= 1e-9 * np.maximum(1.0, np.abs(mean)))
    at_mode = np.abs(window.low + mean - mode) <= 1e-9 * np.maximum(1.0, np.abs(mode))
    likely = np.where(at_mode, share, np.minimum(share, 1.0 - share))
    stuck_log10 = np.where(constant, -n * np.log10((likely * big_n + 1.0) / (big_n + 1.0)), 0.0)
    joint = _joint_test(z_mean, stats)
    tests = max(1, int(tested.sum()) + sum(1 for b in stats.shares if len(b) > 1) + int(varying.sum()))
    tests += joint is not None
    best, feature = (joint or 0.0), None
    for index in range(len(mean)):
        log10_p = max(
            _two_sided_log10(float(z_mean[index])) if tested[index] else 0.0,
            binned[index],
            float(stuck_log10[index]),
        )
        if log10_p > best:
            best, feature = log10_p, index
    stuck = int(np.count_nonzero(constant & (stuck_log10 - math.log10(tests) >= STUCK_LEVEL)))
    return InputDrift(round(_corrected(best, tests), 1), feature, stuck)


def _chi2_log10_sf(statistic: float, df: int) -> float:
    """-log10 of the chi-square survival function (Wilson-Hilferty: a cube root is near normal)."""
    if statistic <= 0:
        return 0.0
    k = 2.0 / (9.0 * df)
    z = ((statistic / df) ** (1.0 / 3.0) - (1.0 - k)) / math.sqrt(k)
    if z <= 0:
        return 0.0
    return max(0.0, _two_sided_log10(z) - math.log10(2.0))


def output_drift(
    counts: Sequence[float], expected_shares: Sequence[float], baseline_samples: int
) -> float | None:
    """Significance (-log10 p) that the window's output counts and the baseline's come from one
    distribution: a two-sample chi-square (the baseline is a sample too). None below
    ``MIN_PER_CLASS`` predictions per category."""
    observed = np.asarray(counts, dtype=np.float64)
    shares = np.asarray(expected_shares, dtype=np.float64)
    size = max(len(observed), len(shares))
    observed = np.pad(observed, (0, size - len(observed)))
    shares = np.pad(shares, (0, size - len(shares)))
    n, big_n = observed.sum(), float(max(baseline_samples, 1))
    if shares.sum() <= 0 or n < MIN_PER_CLASS * size:
        return None
    base = shares / shares.sum() * big_n
    pooled = (observed + base) / (n + big_n)
    used = pooled > 0
    if used.sum() < 2:
        return 0.0
    p = pooled[used]
    statistic = float(
        np.sum((observed[used] - n * p) ** 2 / (n * p) + (base[used] - big_n * p) ** 2 / (big_n * p))
    )
    return round(min(MAX_SIGNIFICANCE, _chi2_log10_sf(statistic, int(used.sum()) - 1)), 1)
