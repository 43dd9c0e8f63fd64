"""The converted model against the source model (and the targets) on the evaluation set."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from protocol.manifest import TaskKind, ValidationReport

TASK_METRICS: dict[TaskKind, tuple[str, ...]] = {
    TaskKind.CLASSIFICATION: ("accuracy", "f1"),
    TaskKind.REGRESSION: ("mae", "rmse"),
    TaskKind.FORECAST: ("mae", "smape"),
}
"""The task metrics, the first one being the one ``--mode auto`` budgets by default."""

HIGHER_IS_BETTER = frozenset({"accuracy", "f1"})


def task_metrics(
    task: TaskKind, outputs: npt.NDArray[np.float64], targets: npt.NDArray[Any]
) -> dict[str, float]:
    n = len(outputs)
    if task is TaskKind.CLASSIFICATION:
        predicted = np.argmax(outputs, axis=1)
        return {"accuracy": float(np.mean(predicted == targets)), "f1": macro_f1(targets, predicted)}
    target_flat = targets.reshape(n, -1).astype(np.float64)
    if target_flat.shape[1] != outputs.shape[1]:
        raise ValueError(
            f"evaluation y has {target_flat.shape[1]} values per sample "
            f"but the model outputs {outputs.shape[1]}"
        )
    error = outputs - target_flat
    metrics = {"mae": float(np.mean(np.abs(error)))}
    if task is TaskKind.REGRESSION:
        metrics["rmse"] = float(np.sqrt(np.mean(error**2)))
    else:
        denominator = np.abs(outputs) + np.abs(target_flat)
        ratio = np.divide(2.0 * np.abs(error), denominator, out=np.zeros_like(error), where=denominator > 0)
        metrics["smape"] = float(np.mean(ratio) * 100.0)
    return metrics


def macro_f1(truth: npt.NDArray[Any], predicted: npt.NDArray[Any]) -> float:
    """Unweighted mean F1 over the classes present in the truth or the predictions."""
    scores = []
    for c in np.union1d(truth, predicted):
        tp = float(np.sum((predicted == c) & (truth == c)))
        fp = float(np.sum((predicted == c) & (truth != c)))
        fn = float(np.sum((predicted != c) & (truth == c)))
        scores.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(scores)) if scores else 0.0


def snr_db(source: npt.NDArray[np.float64], error: npt.NDArray[np.float64]) -> float:
    """10 log10(signal power / error power); capped at 200 dB for identical outputs."""
    noise = float(np.sum(error**2))
    signal = float(np.sum(source**2))
    if noise == 0.0:
        return 200.0
    if signal == 0.0:
        return -200.0
    return float(min(200.0, 10.0 * np.log10(signal / noise)))


def compare(
    task: TaskKind,
    source: npt.NDArray[np.float32] | None,
    converted: npt.NDArray[np.float32],
    targets: npt.NDArray[Any],
    runtime: str,
) -> ValidationReport:
    """Task metrics of both models, top-1 agreement (classification), SNR and output error.

    ``source`` is None for a ready-made TFLite model: then only the converted model's metrics.
    """
    n = len(converted)
    converted_flat = converted.reshape(n, -1).astype(np.float64)
    metrics = task_metrics(task, converted_flat, targets)
    if source is None:
        return ValidationReport(
            samples=n, runtime=runtime, metrics=metrics, max_abs_error=0.0, mean_abs_error=0.0
        )
    source_flat = source.reshape(n, -1).astype(np.float64)
    if source_flat.shape != converted_flat.shape:
        raise ValueError(
            f"source outputs {source.shape} and converted outputs {converted.shape} differ in shape"
        )
    metrics.update({f"{k}_source": v for k, v in task_metrics(task, source_flat, targets).items()})
    error = source_flat - converted_flat
    agreement = None
    if task is TaskKind.CLASSIFICATION:
        agreement = float(np.mean(np.argmax(source_flat, axis=1) == np.argmax(converted_flat, axis=1)))
    return ValidationReport(
        samples=n,
        runtime=runtime,
        metrics=metrics,
        top1_agreement=agreement,
        max_abs_error=float(np.abs(error).max()),
        mean_abs_error=float(np.abs(error).mean()),
        snr_db=round(snr_db(source_flat, error), 2),
    )
