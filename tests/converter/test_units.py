"""Pure pieces of the converter: no subprocess, no model."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from converter.baseline import MAX_INPUT_FEATURES, baseline_stats
from converter.data import Dataset, check_targets, load_npz
from converter.errors import InputError
from converter.metrics import compare
from converter.source import inspect_source
from protocol.manifest import TaskKind


def test_regression_metrics_and_baseline() -> None:
    rng = np.random.default_rng(0)
    targets = rng.normal(size=(100, 1)).astype(np.float32)
    source = targets + 0.1
    converted = source + np.float32(0.05)
    report = compare(TaskKind.REGRESSION, source, converted, targets, "tflite-runtime")
    assert report.metrics["mae_source"] == pytest.approx(0.1, abs=1e-5)
    assert report.metrics["mae"] == pytest.approx(0.15, abs=1e-5)
    assert report.max_abs_error == pytest.approx(0.05, abs=1e-5)
    assert report.top1_agreement is None
    stats = baseline_stats(TaskKind.REGRESSION, rng.random((100, 3)).astype(np.float32), converted)
    assert stats.output_histogram is not None and sum(stats.output_histogram.counts) == 100
    assert stats.class_frequencies is None and len(stats.input_ranges) == 3


def test_baseline_caps_input_features() -> None:
    x = np.zeros((5, 32, 32, 3), dtype=np.float32)
    outputs = np.eye(5, dtype=np.float32)
    stats = baseline_stats(TaskKind.CLASSIFICATION, x, outputs)
    assert len(stats.input_ranges) == MAX_INPUT_FEATURES
    assert stats.class_frequencies == [0.2] * 5


def test_constant_regression_output_still_has_a_histogram() -> None:
    stats = baseline_stats(TaskKind.FORECAST, np.zeros((4, 2), np.float32), np.ones((4, 1), np.float32))
    assert stats.output_histogram is not None and sum(stats.output_histogram.counts) == 4


def test_npz_with_a_single_unnamed_array_is_calibration(tmp_path: Path) -> None:
    np.savez(tmp_path / "cal.npz", np.ones((3, 2)))
    assert load_npz(tmp_path / "cal.npz", "calibration", need_y=False).x.shape == (3, 2)
    with pytest.raises(InputError, match="'x' and one named 'y'"):
        load_npz(tmp_path / "cal.npz", "evaluation", need_y=True)


def test_one_hot_targets_become_class_indices() -> None:
    y = np.eye(3)[[2, 0, 1]]
    data = Dataset(x=np.zeros((3, 1), np.float32), y=y)
    assert check_targets(data, TaskKind.CLASSIFICATION, [None, 3]).tolist() == [2, 0, 1]
    with pytest.raises(InputError, match=r"outside 0\.\.1"):
        check_targets(Dataset(x=data.x, y=np.array([0, 1, 2])), TaskKind.CLASSIFICATION, [None, 2])


def test_functional_keras_config_gives_input_shape(tmp_path: Path) -> None:
    config = {
        "class_name": "Functional",
        "config": {"layers": [{"class_name": "InputLayer", "config": {"batch_shape": [None, 24, 3]}}]},
    }
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    assert inspect_source(path).input_shapes == [[None, 24, 3]]


def test_cli_module_imports_nothing_heavy() -> None:
    import converter.cli  # noqa: F401

    assert "tensorflow" not in sys.modules
    assert "keras" not in sys.modules
