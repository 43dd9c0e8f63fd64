"""The summary features of an input that drift is judged on: the same function for the converter's
baseline and the agent's windows, so the two can never disagree.

An input of at most ``MAX_SUMMARY_FEATURES`` flattened values (a tabular row, an 8x8 image) is its
own summary: every value is a feature. A larger one (an image, a long window) is cut, in C order,
into ``MAX_SUMMARY_FEATURES`` contiguous runs of about equal length, and each run's mean is a
feature: for an image these are bands of rows, so the baseline stays small (five numbers per
feature) and a window costs one ``np.add.reduceat`` per request. A dead pixel in a large image moves
its band's mean by only 1/run-length of its value; such inputs are judged coarsely.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

MAX_SUMMARY_FEATURES = 64


def run_starts(values: int) -> npt.NDArray[np.intp]:
    """Where each summary feature's run begins in the flattened input (one run per value when small)."""
    count = min(values, MAX_SUMMARY_FEATURES)
    return (np.arange(count, dtype=np.int64) * values // count).astype(np.intp)


def summarize(
    first_input: npt.NDArray[np.floating[Any]], values: int | None = None
) -> npt.NDArray[np.float64] | None:
    """(instances, features) float64 summary of a batch; None when an instance does not hold
    ``values`` flattened values (when given) or the batch is empty."""
    if first_input.ndim == 0 or len(first_input) == 0:
        return None
    flat = first_input.reshape(len(first_input), -1)
    width = flat.shape[1]
    if width == 0 or (values is not None and width != values):
        return None
    if width <= MAX_SUMMARY_FEATURES:
        return flat.astype(np.float64)
    starts = run_starts(width)
    lengths = np.diff(np.append(starts, width))
    sums: npt.NDArray[np.float64] = np.add.reduceat(flat, starts, axis=1, dtype=np.float64)
    means: npt.NDArray[np.float64] = sums / lengths
    return means


MAX_JOINT_FEATURES = 32
"""Up to this many features, the baseline carries the inverse covariance's Cholesky factor (at most
528 numbers) for the joint test of all means; beyond, the features are tested one by one."""
BINS = 10
"""Decile bins per feature (fewer where the baseline's deciles coincide: discrete features)."""


def padded_edges(edges: list[list[float]]) -> npt.NDArray[np.float64]:
    """(features, most edges) with +inf after each feature's own edges, for ``bin_of``."""
    width = max((len(e) for e in edges), default=0)
    padded = np.full((len(edges), max(width, 1)), np.inf)
    for row, values in enumerate(edges):
        padded[row, : len(values)] = values
    return padded


def bin_of(summary: npt.NDArray[np.float64], padded: npt.NDArray[np.float64]) -> npt.NDArray[np.intp]:
    """(instances, features) bin index: how many of the feature's edges are at or below the value."""
    # One sorted search per feature: ten times faster than comparing every value with every edge.
    columns = np.ascontiguousarray(summary.T)
    counted = np.empty(columns.shape, dtype=np.intp)
    for feature in range(padded.shape[0]):
        counted[feature] = np.searchsorted(padded[feature], columns[feature], side="right")
    return counted.T
