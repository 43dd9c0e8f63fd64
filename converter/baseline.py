"""Baseline statistics: what healthy predictions and inputs look like, for the agent's checks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from protocol.manifest import BaselineStats, FeatureRange, Histogram, TaskKind

HISTOGRAM_BINS = 10
MAX_INPUT_FEATURES = 256
"""Input ranges are recorded for the first this-many flattened input features only (C order), so
the manifest stays small for images and long windows; the agent checks those features."""


def baseline_stats(
    task: TaskKind, inputs: npt.NDArray[np.float32], outputs: npt.NDArray[np.float32]
) -> BaselineStats:
    """From the converted model's dequantized outputs on the evaluation inputs."""
    n = len(outputs)
    flat_out = outputs.reshape(n, -1).astype(np.float64)
    ranges = input_ranges(inputs)
    if task is TaskKind.CLASSIFICATION:
        classes = flat_out.shape[1]
        counts = np.bincount(np.argmax(flat_out, axis=1), minlength=classes)
        confidence = np.clip(flat_out.max(axis=1), 0.0, 1.0)
        return BaselineStats(
            samples=n,
            class_frequencies=[float(c) / n for c in counts],
            confidence_histogram=_histogram(confidence, np.linspace(0.0, 1.0, HISTOGRAM_BINS + 1)),
            input_ranges=ranges,
        )
    first = flat_out[:, 0]
    low, high = float(first.min()), float(first.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return BaselineStats(
        samples=n,
        output_histogram=_histogram(first, np.linspace(low, high, HISTOGRAM_BINS + 1)),
        input_ranges=ranges,
    )


def input_ranges(inputs: npt.NDArray[np.float32]) -> list[FeatureRange]:
    flat = inputs.reshape(len(inputs), -1)[:, :MAX_INPUT_FEATURES].astype(np.float64)
    lows, highs, means = flat.min(axis=0), flat.max(axis=0), flat.mean(axis=0)
    return [
        FeatureRange(min=float(lo), max=float(hi), mean=float(mu))
        for lo, hi, mu in zip(lows, highs, means, strict=True)
    ]


def _histogram(values: npt.NDArray[np.float64], edges: npt.NDArray[np.float64]) -> Histogram:
    counts, _ = np.histogram(values, bins=edges)
    return Histogram(edges=[float(e) for e in edges], counts=[int(c) for c in counts])
