"""The converted model against the source model on the evaluation set."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.manifest import TaskKind, ValidationReport


def compare(
    task: TaskKind,
    source: npt.NDArray[np.float32],
    converted: npt.NDArray[np.float32],
    targets: npt.NDArray[Any],
    runtime: str,
) -> ValidationReport:
    """Task metrics of both models, top-1 agreement (classification) and output error."""
    n = len(source)
    source_flat = source.reshape(n, -1).astype(np.float64)
    converted_flat = converted.reshape(n, -1).astype(np.float64)
    if source_flat.shape != converted_flat.shape:
        raise ValueError(
            f"source outputs {source.shape} and converted outputs {converted.shape} differ in shape"
        )
    error = np.abs(source_flat - converted_flat)
    metrics: dict[str, float] = {}
    agreement = None
    if task is TaskKind.CLASSIFICATION:
        source_top = np.argmax(source_flat, axis=1)
        converted_top = np.argmax(converted_flat, axis=1)
        metrics["accuracy_source"] = float(np.mean(source_top == targets))
        metrics["accuracy"] = float(np.mean(converted_top == targets))
        agreement = float(np.mean(source_top == converted_top))
    else:
        target_flat = targets.reshape(n, -1).astype(np.float64)
        if target_flat.shape[1] != source_flat.shape[1]:
            raise ValueError(
                f"evaluation y has {target_flat.shape[1]} values per sample "
                f"but the model outputs {source_flat.shape[1]}"
            )
        metrics["mae_source"] = float(np.mean(np.abs(source_flat - target_flat)))
        metrics["mae"] = float(np.mean(np.abs(converted_flat - target_flat)))
    return ValidationReport(
        samples=n,
        runtime=runtime,
        metrics=metrics,
        top1_agreement=agreement,
        max_abs_error=float(error.max()),
        mean_abs_error=float(error.mean()),
    )
