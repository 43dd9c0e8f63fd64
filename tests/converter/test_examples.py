"""The three worked examples (digits CNN, diabetes MLP, sunspots LSTM), each converted with
``--mode auto``: every mode converted, validated in both runtimes and measured; one picked."""

from __future__ import annotations

from pathlib import Path

import pytest

from protocol.bundle import read_bundle
from protocol.manifest import QuantizationMode, TaskKind
from protocol.signing import TrustedKeys
from tests.support.converter import Converted

pytestmark = pytest.mark.slow

EXAMPLES = {
    "digits": (TaskKind.CLASSIFICATION, "accuracy", {"accuracy": "0.01"}),
    "diabetes": (TaskKind.REGRESSION, "mae", {"mae": "2%"}),
    "sunspots": (TaskKind.FORECAST, "mae", {"mae": "3%"}),
}


@pytest.mark.parametrize("name", EXAMPLES)
def test_every_mode_is_converted_and_measured(name: str, auto_converted: dict[str, Converted]) -> None:
    conversion = auto_converted[name].report["conversion"]
    rows = {row["mode"]: row for row in conversion["candidates"]}
    assert list(rows) == ["none", "float16", "dynamic", "int8", "int16x8"]
    for mode, row in rows.items():
        assert row["model_size"] and row["model_size"] > 0, (mode, row)
        assert row["size_ratio"] == pytest.approx(row["model_size"] / rows["none"]["model_size"], abs=1e-4)
        assert "litert" in row["latency_ms_p50"], (mode, row)
    # TF 2.21's dynamic-range models do not load in tflite-runtime 2.14; everything else does.
    assert "FULLY_CONNECTED" in rows["dynamic"]["error"] and not rows["dynamic"]["ok"]
    for mode in ("none", "float16", "int8", "int16x8"):
        assert "tflite-runtime" in rows[mode]["latency_ms_p50"], mode
    assert rows["int8"]["size_ratio"] < 0.8 and rows["float16"]["size_ratio"] < 0.8


@pytest.mark.parametrize("name", EXAMPLES)
def test_auto_picks_a_mode_inside_the_budget(
    name: str, auto_converted: dict[str, Converted], signing_keys: tuple[Path, Path]
) -> None:
    task, metric, budget = EXAMPLES[name]
    converted = auto_converted[name]
    manifest = read_bundle(converted.bundle).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert manifest.task is task and manifest.conversion is not None
    assert manifest.conversion.max_drop == budget
    chosen = [c for c in manifest.conversion.candidates if c.chosen]
    assert len(chosen) == 1 and chosen[0].mode is manifest.quantization and chosen[0].ok
    assert manifest.quantization is not QuantizationMode.DYNAMIC  # does not load in tflite-runtime
    assert manifest.runtimes["tflite-runtime"].loads
    validation = manifest.validation
    assert validation is not None and validation.snr_db is not None
    source, value = validation.metrics[f"{metric}_source"], validation.metrics[metric]
    if metric == "accuracy":
        assert source - value <= 0.01 and "f1" in validation.metrics
    else:
        assert (value - source) / source <= float(budget[metric].rstrip("%")) / 100
    # The table on stdout names every mode and the pick.
    out = converted.run.stdout
    assert "modes tried" in out and "CHOSEN" in out and "int16x8" in out
    assert "picked by --mode auto" in out


def test_digits_picks_int8(auto_converted: dict[str, Converted]) -> None:
    report = auto_converted["digits"].report
    assert report["mode"] == "int8" and report["conversion"]["io_type"] == "int8"
    assert report["inputs"][0]["dtype"] == "int8"


def test_sunspots_lstm_is_unrolled_and_reported(auto_converted: dict[str, Converted]) -> None:
    conversion = auto_converted["sunspots"].report["conversion"]
    assert conversion["recurrent"].startswith("LSTM x1: unrolled for the fixed sequence length")
    assert "no WHILE loop" in conversion["recurrent"]
    assert "WHILE" not in conversion["ops"]
    assert (
        "recurrent layers unrolled for 12 time steps (--rnn unroll)" in auto_converted["sunspots"].run.stdout
    )
    metrics = auto_converted["sunspots"].report["validation"]["metrics"]
    assert {"mae", "smape", "mae_source", "smape_source"} <= set(metrics)


def test_diabetes_records_its_standardization(
    auto_converted: dict[str, Converted], signing_keys: tuple[Path, Path]
) -> None:
    """The example's data are raw features; its preprocessing.json is recorded and applied. The
    model's Rescaling layer sits at the output (target units), so it is not ``in_model``."""
    manifest = read_bundle(auto_converted["diabetes"].bundle).verify(
        TrustedKeys.from_paths([signing_keys[1]])
    )
    (pre,) = manifest.preprocessing.values()
    assert pre.method == "standardize" and isinstance(pre.offset, list) and len(pre.offset) == 10
    # Raw scikit-learn features (each column scaled to unit norm) stay within +-0.25.
    assert manifest.baseline is not None
    assert all(-0.25 < r.min <= r.max < 0.25 for r in manifest.baseline.input_ranges)
    digits = read_bundle(auto_converted["digits"].bundle).verify(TrustedKeys.from_paths([signing_keys[1]]))
    assert digits.preprocessing == {}
