"""The scikit-learn and ONNX part of ``benchmarks.converter``: each example of
``converter.examples_foreign`` (and the variants that show a choice) trained and converted with
``--mode auto``; per mode, the metric's change against the source framework's own predictions
(the estimator's ``predict_proba``/``predict``, onnxruntime for the ONNX file), the size ratio to
the float32 .tflite, the host latency (p50 of one sample) in each runtime, and the conversion
time. Needs the converter-sklearn extra (and converter-torch for the PyTorch forecaster row);
without it the rows say so and the rest runs.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from benchmarks.conversion_run import convert_and_show
from converter.examples_foreign import MODEL_FILES, TASKS, train
from converter.pipeline import ConversionRequest, ConversionResult
from protocol.manifest import TaskKind

RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    # row name: (examples_foreign example, extra request fields)
    "sklearn-gb-cancer": ("cancer-gb", {}),
    "sklearn-gb-cancer-scaled": ("cancer-gb-scaled", {}),
    "sklearn-pipeline-diabetes": ("diabetes-pipeline", {}),
    "sklearn-pipeline-diabetes-scaler-in-graph": ("diabetes-pipeline", {"sklearn_scaler": "graph"}),
    "onnx-gb-cancer": ("cancer-onnx", {}),
}
TORCH_ROW = "torch-forecaster-sunspots"
"""With the converter-torch extra: the PyTorch forecaster of ``converter.examples_torch``."""
METRIC = {TaskKind.CLASSIFICATION: "accuracy", TaskKind.REGRESSION: "mae", TaskKind.FORECAST: "mae"}
RUNTIMES = ("tflite-runtime", "litert")


def available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("onnx", "onnx2tf", "skl2onnx", "tf_keras"))


def torch_available() -> bool:
    return all(importlib.util.find_spec(m) for m in ("torch", "onnxscript"))


def run_foreign(work: Path, key: Path, progress: Any) -> tuple[dict[str, Any], list[str]]:
    """Figures per row, and the rows whose conversion failed (with the error)."""
    figures: dict[str, Any] = {}
    failures: list[str] = []
    runs: list[tuple[str, str, dict[str, Any]]] = [(n, e, o) for n, (e, o) in RUNS.items()]
    if torch_available():
        runs.append((TORCH_ROW, "torch", {}))
    for name, example, options in runs:
        folder = work / example
        if example == "torch":
            from converter.examples_torch import write_data

            write_data(folder)
            model, task = Path("torch:converter.examples_torch:forecaster"), TaskKind.FORECAST
        else:
            if not (folder / MODEL_FILES[example]).is_file():
                print(f"training {example}...", file=sys.stderr, flush=True)
                train(example, folder)
            model, task = folder / MODEL_FILES[example], TaskKind(TASKS[example])
        print(f"converting {name} with --mode auto...", file=sys.stderr, flush=True)
        request = ConversionRequest(
            model=model, calibration=folder / "calibration.npz",
            evaluation=folder / "evaluation.npz", mode="auto", name=example, version="1.0.0",
            task=task, key=key, out=work / f"{name}.bundle", force=True, **options,
        )  # fmt: skip

        result = convert_and_show(name, request, progress, _headline)
        if isinstance(result, str):
            failures.append(result)
            continue
        figures[name] = _figures(result, task)
    return figures, failures


def _headline(name: str, result: ConversionResult) -> str:
    conversion = result.manifest.conversion
    source = conversion.source if conversion else "?"
    return f"{name} ({result.manifest.task.value}, from {source}; convert {result.seconds['convert']} s)"


def _figures(result: ConversionResult, task: TaskKind) -> dict[str, Any]:
    metric = METRIC[task]
    modes: dict[str, Any] = {}
    for c in result.candidates:
        row: dict[str, Any] = {"converted": c.model is not None, "ok": c.ok}
        if c.model is not None and result.float32_model_bytes:
            row["size_ratio"] = round(len(c.model) / result.float32_model_bytes, 3)
            row["size_bytes"] = len(c.model)
        if c.validation is not None:
            source, value = c.validation.metrics[f"{metric}_source"], c.validation.metrics[metric]
            row[f"{metric}_source"] = round(source, 4)
            row[f"{metric}_change"] = round(value - source, 4)
            row[f"{metric}_change_pct"] = round((value - source) / source * 100, 2) if source else None
        for runtime in RUNTIMES:
            latency = c.latency(runtime)
            row[f"latency_ms_{runtime}"] = round(latency, 4) if latency is not None else None
        modes[c.mode.value] = row
    return {
        "chosen": result.manifest.quantization.value,
        "convert_seconds": result.seconds.get("convert"),
        "total_seconds": result.seconds.get("total"),
        "float32_tflite_bytes": result.float32_model_bytes,
        "modes": modes,
    }


def targets(figures: dict[str, Any]) -> dict[str, Any]:
    """int8 within 1 point of accuracy / 2 % MAE of the source, where int8 applies."""

    def int8(name: str, key: str) -> Any:
        return figures.get(name, {}).get("modes", {}).get("int8", {}).get(key)

    accuracy = {n: int8(n, "accuracy_change") for n in figures if n.startswith(("sklearn-gb", "onnx"))}
    mae = {n: int8(n, "mae_change_pct") for n in figures if "diabetes" in n}
    forecast = {n: int8(n, "mae_change_pct") for n in figures if n == TORCH_ROW}
    return {
        "foreign_int8_accuracy_drop_max_0.01": {
            "values": accuracy,
            "met": all(v is not None and -v <= 0.01 for v in accuracy.values()),
        },
        "foreign_int8_mae_increase_max_2pct": {
            "values": mae,
            "met": all(v is not None and v <= 2.0 for v in mae.values()),
        },
        "torch_int8_mae_increase_max_3pct": {
            "values": forecast,
            "met": all(v is not None and v <= 3.0 for v in forecast.values()),
        },
        "foreign_chosen_within_budget": {
            "chosen": {n: f["chosen"] for n, f in figures.items()},
            "met": all(f["modes"][f["chosen"]]["ok"] for f in figures.values()),
        },
    }
