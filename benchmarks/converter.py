"""Converter figures, measured side by side in one run.

Trains the three worked examples (digits CNN, diabetes MLP, sunspots LSTM; plus the sunspots
forecaster with a GRU) on data that ships inside scikit-learn and statsmodels, converts each with
``--mode auto`` through ``converter.pipeline`` (every mode converted in a TensorFlow subprocess,
validated in tflite-runtime and LiteRT in their own subprocesses), and reports for each example
and mode: the size ratio to the float32 .tflite, the task metric's change against the source
model, and the host latency ratio to float32 in each runtime (p50 of one sample, one thread).
It also converts the sunspots LSTM with ``--rnn keep`` to show what becomes of the crashing modes.

With the converter-sklearn extra installed it also converts the scikit-learn and ONNX examples
(``benchmarks.converter_foreign``); ``--only foreign`` or ``--only keras`` runs one part.

Prints a table and, last, one line of JSON: ``{"benchmark": "converter", "figures": {...}}``.
Timings on shared cores are noisy: compare the figures of one run with each other.

    .venv/bin/python -m benchmarks.converter [--quick] [--only keras|foreign]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import converter_foreign
from benchmarks.conversion_run import convert_and_show
from converter.errors import ConverterError
from converter.examples import PREPROCESSING_FILE
from converter.pipeline import ConversionRequest, ConversionResult, convert
from protocol.manifest import TaskKind
from protocol.signing import generate_private_key, private_key_pem

EXAMPLES: dict[str, tuple[str, TaskKind, list[str]]] = {
    # name: (converter.examples name, task, extra training args)
    "digits": ("digits", TaskKind.CLASSIFICATION, []),
    "diabetes": ("diabetes", TaskKind.REGRESSION, []),
    "sunspots-lstm": ("sunspots", TaskKind.FORECAST, ["--cell", "lstm"]),
    "sunspots-gru": ("sunspots", TaskKind.FORECAST, ["--cell", "gru"]),
}
TRAIN_CALIBRATION = "sunspots-lstm-train-calibration"
"""The sunspots LSTM again, calibrated on the training years only (their inputs stop at 154)."""
FORECASTS = ("sunspots-lstm", "sunspots-gru", TRAIN_CALIBRATION)
"""The target (+3 % MAE at most) is judged on the examples as shipped, the first two."""
METRIC = {TaskKind.CLASSIFICATION: "accuracy", TaskKind.REGRESSION: "mae", TaskKind.FORECAST: "mae"}
RUNTIMES = ("tflite-runtime", "litert")


def _progress(message: str) -> None:
    print(f"  | {message}", file=sys.stderr, flush=True)


def _train(example: str, folder: Path, extra: list[str], quick: bool) -> None:
    epochs = ["--epochs", "30"] if quick and example != "digits" else []
    subprocess.run(
        [sys.executable, "-m", "converter.examples", example, str(folder), *extra, *epochs],
        check=True,
        capture_output=True,
    )


def _request(
    name: str, folder: Path, task: TaskKind, key: Path, out: Path, **extra: Any
) -> ConversionRequest:
    return ConversionRequest(
        model=folder / "model.keras",
        calibration=extra.pop("calibration", folder / "calibration.npz"),
        evaluation=folder / "evaluation.npz",
        mode="auto",
        name=name,
        version="1.0.0",
        task=task,
        key=key,
        out=out,
        force=True,
        labels=folder / "labels.txt" if (folder / "labels.txt").is_file() else None,
        # The diabetes example's data are raw features, with the standardization it was trained with.
        preprocessing_file=folder / PREPROCESSING_FILE if (folder / PREPROCESSING_FILE).is_file() else None,
        **extra,
    )


def _headline(name: str, result: ConversionResult) -> str:
    recurrent = result.manifest.conversion.recurrent if result.manifest.conversion else None
    return f"{name} ({result.manifest.task.value}){' - ' + recurrent if recurrent else ''}"


def _figures(result: ConversionResult, task: TaskKind) -> dict[str, Any]:
    metric = METRIC[task]
    reference = next(c for c in result.candidates if c.mode.value == "none")
    modes: dict[str, Any] = {}
    for c in result.candidates:
        row: dict[str, Any] = {"converted": c.model is not None}
        if c.model is not None and result.float32_model_bytes:
            row["size_ratio"] = round(len(c.model) / result.float32_model_bytes, 3)
        if c.validation is not None:
            source, value = c.validation.metrics[f"{metric}_source"], c.validation.metrics[metric]
            row[f"{metric}_change"] = round(value - source, 4)
            row[f"{metric}_change_pct"] = round((value - source) / source * 100, 2) if source else None
        for runtime in RUNTIMES:
            latency, base = c.latency(runtime), reference.latency(runtime)
            row[f"loads_{runtime}"] = latency is not None
            if latency is not None and base:
                row[f"latency_ratio_{runtime}"] = round(latency / base, 2)
        if c.error is not None:
            row["error"] = str(c.error)[:120]
        modes[c.mode.value] = row
    samples = result.manifest.files["samples.npz"]
    return {
        "chosen": result.manifest.quantization.value,
        "modes": modes,
        # The bundle against its model: what the smoke samples (compressed, in the model's input
        # dtype), the manifest and the signature add.
        "bundle": {
            "model_bytes": result.model_size,
            "bundle_bytes": result.bundle_size,
            "samples_bytes": samples.size,
            "smoke_samples": result.manifest.smoke.samples,
            "bundle_over_model": round(result.bundle_size / result.model_size, 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer training epochs (figures less representative)"
    )
    parser.add_argument("--only", choices=("keras", "foreign"), help="run one part (default: both)")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {}
    crashed_cli: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-converter-") as tmp:
        work = Path(tmp)
        key = work / "operator.key"
        key.write_bytes(private_key_pem(generate_private_key()))
        if args.only != "keras":
            foreign: dict[str, Any] = {"skipped": "the converter-sklearn extra is not installed"}
            if converter_foreign.available():
                rows, failures = converter_foreign.run_foreign(work / "foreign", key, _progress)
                crashed_cli += failures
                foreign = {**rows, "targets": converter_foreign.targets(rows)}
            figures["foreign"] = foreign
        if args.only == "foreign":
            _finish(
                figures, {"no_conversion_crashes_the_cli": {"failures": crashed_cli, "met": not crashed_cli}}
            )
            return 0
        runs: list[tuple[str, str, TaskKind, list[str], dict[str, Any]]] = [
            (name, *spec, {}) for name, spec in EXAMPLES.items()
        ]
        train_calibration = work / "sunspots-lstm" / "calibration-train.npz"
        runs.append(
            (TRAIN_CALIBRATION, "sunspots", TaskKind.FORECAST, [], {"calibration": train_calibration})
        )
        for name, example, task, extra, options in runs:
            folder = work / name if name != TRAIN_CALIBRATION else work / "sunspots-lstm"
            if not (folder / "model.keras").is_file():
                print(f"training {name}...", file=sys.stderr, flush=True)
                _train(example, folder, extra, args.quick)
            print(f"converting {name} with --mode auto...", file=sys.stderr, flush=True)
            request = _request(name, folder, task, key, work / f"{name}.bundle", **options)

            result = convert_and_show(name, request, _progress, _headline)
            if isinstance(result, str):
                crashed_cli.append(result)
                continue
            figures[name] = _figures(result, task)
        # The sunspots LSTM kept as a loop: the modes that crash or fail must end as typed errors.
        print("converting sunspots-lstm with --rnn keep...", file=sys.stderr, flush=True)
        folder = work / "sunspots-lstm"
        try:
            convert(
                _request("sunspots-keep", folder, TaskKind.FORECAST, key, work / "keep.bundle", rnn="keep"),
                progress=_progress,
            )
            keep = "converted"
        except ConverterError as exc:
            keep = f"{type(exc).__name__}: {str(exc)[:160]}"
        print(f"\nsunspots-lstm --rnn keep: {keep}")
    figures["rnn_keep_sunspots_lstm"] = keep
    _finish(figures, _targets(figures, crashed_cli))
    return 0


def _finish(figures: dict[str, Any], targets: dict[str, Any]) -> None:
    foreign = figures.get("foreign", {})
    targets = {**targets, **foreign.get("targets", {})}
    figures["targets"] = targets
    print("\ntargets")
    for target, value in targets.items():
        print(f"  {target:<52}{json.dumps(value)}")
    print(json.dumps({"benchmark": "converter", "figures": figures}))


def _targets(figures: dict[str, Any], crashed_cli: list[str]) -> dict[str, Any]:
    def int8(name: str, key: str) -> Any:
        return figures.get(name, {}).get("modes", {}).get("int8", {}).get(key)

    ratios = {name: int8(name, "size_ratio") for name in figures if name in EXAMPLES or name in FORECASTS}
    return {
        "int8_size_ratio_max_0.30": {
            "values": ratios,
            "met": all(r is not None and r <= 0.30 for r in ratios.values()),
        },
        "digits_int8_accuracy_drop_max_0.01": {
            "value": -(int8("digits", "accuracy_change") or 0.0),
            "met": -(int8("digits", "accuracy_change") or 0.0) <= 0.01,
        },
        "diabetes_int8_mae_increase_max_2pct": {
            "value": int8("diabetes", "mae_change_pct"),
            "met": (int8("diabetes", "mae_change_pct") or 0.0) <= 2.0,
        },
        "forecast_int8_mae_increase_max_3pct": {
            "values": {n: int8(n, "mae_change_pct") for n in FORECASTS},
            "met": all((int8(n, "mae_change_pct") or 99.0) <= 3.0 for n in FORECASTS[:2]),
        },
        "no_conversion_crashes_the_cli": {"failures": crashed_cli, "met": not crashed_cli},
        "every_shipped_model_loads_in_tflite_runtime": {
            "chosen": {n: f["chosen"] for n, f in figures.items() if "chosen" in f},
            "met": all(
                f["modes"][f["chosen"]].get("loads_tflite-runtime", True)
                for f in figures.values()
                if "chosen" in f
            ),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
