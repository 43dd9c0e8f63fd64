"""Baseline statistics: what healthy predictions and inputs look like, for the agent's checks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from protocol.features import BINS, MAX_JOINT_FEATURES, bin_of, padded_edges, summarize
from protocol.manifest import BaselineStats, FeatureRange, FeatureStats, Histogram, TaskKind

HISTOGRAM_BINS = 10
JOINT_SHRINKAGE = 0.02
"""Weight of the identity in the correlation matrix of the joint test (see ``_precision_cholesky``)."""
MAX_INPUT_FEATURES = 256
"""Input ranges are recorded for the first this-many flattened input features only (C order), so
the manifest stays small for images and long windows; the agent checks those features."""


def baseline_stats(
    task: TaskKind,
    inputs: npt.NDArray[np.float32],
    outputs: npt.NDArray[np.float32],
    *,
    input_features: bool = True,
) -> BaselineStats:
    """From the converted model's dequantized outputs on the evaluation inputs; ``input_features``
    False leaves the feature statistics out (a bundle for agents that predate them)."""
    n = len(outputs)
    flat_out = outputs.reshape(n, -1).astype(np.float64)
    ranges = input_ranges(inputs)
    features = input_feature_stats(inputs) if input_features else None
    if task is TaskKind.CLASSIFICATION:
        classes = flat_out.shape[1]
        counts = np.bincount(np.argmax(flat_out, axis=1), minlength=classes)
        confidence = np.clip(flat_out.max(axis=1), 0.0, 1.0)
        return BaselineStats(
            samples=n,
            class_frequencies=[float(c) / n for c in counts],
            confidence_histogram=_histogram(confidence, np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)),
            input_ranges=ranges,
            input_features=features,
        )
    first = flat_out[:, 0]
    low, high = float(first.min()), float(first.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return BaselineStats(
        samples=n,
        output_histogram=_histogram(first, np.linspace(low, high, HISTOGRAM_BINS + 1)),
        input_ranges=ranges,
        input_features=features,
    )


def input_ranges(inputs: npt.NDArray[np.float32]) -> list[FeatureRange]:
    flat = inputs.reshape(len(inputs), -1)[:, :MAX_INPUT_FEATURES].astype(np.float64)
    lows, highs, means = flat.min(axis=0), flat.max(axis=0), flat.mean(axis=0)
    return [
        FeatureRange(min=float(lo), max=float(hi), mean=float(mu))
        for lo, hi, mu in zip(lows, highs, means, strict=True)
    ]


def input_feature_stats(inputs: npt.NDArray[np.float32]) -> FeatureStats | None:
    """What the agent tests a window's first input against (``agent.drift``), per summary feature
    (``protocol.features``); None for inputs that are not real-valued (the agent tests float
    inputs only) or too few samples."""
    if inputs.dtype.kind != "f" or len(inputs) < 2:
        return None
    summary = summarize(inputs)
    if summary is None:
        return None
    n, size = summary.shape
    mean = summary.mean(axis=0)
    edges = [_edges(column) for column in summary.T]
    bins = bin_of(summary, padded_edges(edges))
    shares = [np.bincount(bins[:, i], minlength=len(e) + 1) / n for i, e in enumerate(edges)]
    modes, mode_shares = [], []
    for column in summary.T:
        values, counts = np.unique(column, return_counts=True)
        top = int(np.argmax(counts))
        modes.append(float(values[top]))
        mode_shares.append(float(counts[top]) / n)
    return FeatureStats(
        values=int(np.prod(inputs.shape[1:])),
        mean=_rounded(mean),
        std=_rounded(summary.std(axis=0)),
        mode=modes,
        mode_share=_rounded(np.asarray(mode_shares)),
        edges=edges,
        shares=[_rounded(s) for s in shares],
        precision_cholesky=_precision_cholesky(bins.astype(np.float64))
        if size <= MAX_JOINT_FEATURES
        else None,
    )


def _edges(column: npt.NDArray[np.float64]) -> list[float]:
    """The distinct inner deciles; the lowest is dropped when it is the minimum (an empty bin)."""
    inner = np.unique(np.quantile(column, np.arange(1, BINS) / BINS))
    return [float(e) for e in inner if e > column.min()]


def _precision_cholesky(bins: npt.NDArray[np.float64]) -> list[float] | None:
    """L (lower triangle, row by row) with L Lᵀ = the inverse of the correlation matrix of the
    features' decile-bin indices, shrunk towards the identity, on the features that vary (a
    constant one gets a zero row: the joint test ignores it); None when it cannot be inverted.

    Bin indices, not values: a rank correlation, which a few outliers of a heavy-tailed feature
    cannot inflate; and shrinkage, because the smallest eigenvalues of a correlation matrix
    estimated from a few hundred samples are too small, and would make clean windows look drifted."""
    summary = bins
    size = summary.shape[1]
    std = summary.std(axis=0)
    covariance = np.atleast_2d(np.cov(summary / np.where(std > 0, std, 1.0), rowvar=False, bias=True))
    varying = std > 0
    factor = np.zeros((size, size))
    if not varying.any():
        return None
    inner = covariance[np.ix_(varying, varying)]
    inner = (1.0 - JOINT_SHRINKAGE) * inner + JOINT_SHRINKAGE * np.eye(len(inner))
    try:
        lower = np.linalg.cholesky(np.linalg.inv(inner))
    except np.linalg.LinAlgError:
        return None
    factor[np.ix_(varying, varying)] = lower
    return _rounded(factor[np.tril_indices(size)])


def _rounded(values: npt.NDArray[np.float64]) -> list[float]:
    """Seven significant digits: the manifest stays small and float32 inputs lose little."""
    return [float(f"{v:.7g}") for v in values]


def _histogram(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> Histogram:
    counts, _ = np.histogram(values, bins=edges)
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])
