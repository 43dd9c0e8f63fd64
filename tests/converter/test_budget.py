"""Pure pieces of the converter: --max-drop budget, more metrics, more data and model kinds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from converter.data import load_data
from converter.errors import InputError, UnsupportedModelError
from converter.gates import parse_gates
from converter.metrics import compare, macro_f1, snr_db
from converter.source import SourceKind, inspect_source
from protocol.manifest import TaskKind, ValidationReport


def _report(**metrics: float) -> ValidationReport:
    return ValidationReport(samples=1, runtime="x", metrics=metrics, max_abs_error=0, mean_abs_error=0)


def test_absolute_and_relative_budgets() -> None:
    accuracy, mae = (
        parse_gates(["accuracy=0.01"], TaskKind.CLASSIFICATION)[0],
        parse_gates(["mae=2%"], TaskKind.REGRESSION)[0],
    )
    assert accuracy.failure(_report(accuracy_source=0.97, accuracy=0.965)) is None
    assert accuracy.failure(_report(accuracy_source=0.97, accuracy=0.95)) == (
        "accuracy dropped by +0.0200 (budget accuracy=0.01)"
    )
    assert mae.failure(_report(mae_source=40.0, mae=40.7)) is None
    assert mae.failure(_report(mae_source=40.0, mae=41.0)) == "mae rose by +2.50% (budget mae=2%)"
    assert mae.failure(_report(mae_source=40.0, mae=30.0)) is None  # better is always fine


@pytest.mark.parametrize(
    ("spec", "task", "message"),
    [
        ("accuracy", TaskKind.CLASSIFICATION, "expected METRIC=AMOUNT"),
        ("mae=2%", TaskKind.CLASSIFICATION, "METRIC one of accuracy, f1 for classification"),
        ("smape=x%", TaskKind.FORECAST, "'x%' is not a number"),
        ("rmse=-1", TaskKind.REGRESSION, "must not be negative"),
    ],
)
def test_bad_budgets(spec: str, task: TaskKind, message: str) -> None:
    with pytest.raises(InputError, match=message):
        parse_gates([spec], task)


def test_metrics() -> None:
    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])) == 1.0
    assert macro_f1(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])) == pytest.approx((2 / 3 + 0.8) / 2)
    assert snr_db(np.ones(10), np.full(10, 0.1)) == pytest.approx(20.0)
    targets = np.array([[1.0], [3.0]], dtype=np.float32)
    report = compare(TaskKind.FORECAST, targets, targets + 1, targets, "r")
    assert report.metrics["smape_source"] == 0.0
    assert report.metrics["smape"] == pytest.approx(100 * (2 / 3 + 2 / 7) / 2)
    assert report.metrics["mae"] == 1.0 and report.snr_db == pytest.approx(10 * np.log10(10 / 2), abs=0.01)


def test_csv_and_npy(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b,y\n1,2,3\n4,5,6\n")
    data = load_data(tmp_path / "x.csv", "evaluation", need_y=True)
    assert data.x.tolist() == [[1, 2], [4, 5]] and data.y is not None and data.y.tolist() == [3, 6]
    assert load_data(tmp_path / "x.csv", "calibration", need_y=False).x.shape == (2, 3)
    np.save(tmp_path / "x.npy", np.ones((3, 2), dtype=np.float64))
    loaded = load_data(tmp_path / "x.npy", "calibration", need_y=False)
    assert loaded.x.dtype == np.float32 and loaded.x.shape == (3, 2)
    with pytest.raises(InputError, match="without targets"):
        load_data(tmp_path / "x.npy", "evaluation", need_y=True)
    (tmp_path / "bad.csv").write_text("1,2\n3,oops\n")
    with pytest.raises(InputError, match="not a number"):
        load_data(tmp_path / "bad.csv", "calibration", need_y=False)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match=r"not a supported kind; use \.npz"):
        load_data(tmp_path / "x.parquet", "calibration", need_y=False)


def test_inf_in_csv_calibration_is_refused(tmp_path: Path) -> None:
    from converter.data import check_finite

    (tmp_path / "x.csv").write_text("1,2\n3,inf\n")
    data = load_data(tmp_path / "x.csv", "calibration", need_y=False)
    with pytest.raises(
        InputError, match=r"calibration x holds 1 non-finite values \(NaN or inf\), first in sample 1"
    ):
        check_finite(data.x, "calibration x")


def test_model_kinds(tmp_path: Path) -> None:
    assert inspect_source(Path("pkg.models:build")).kind is SourceKind.FACTORY
    (tmp_path / "make.py").write_text("def build(): pass\n")
    factory = inspect_source(Path(f"{tmp_path / 'make.py'}:build"))
    assert factory.kind is SourceKind.FACTORY and factory.reference.endswith("make.py:build")
    with pytest.raises(InputError, match="model factory file"):
        inspect_source(Path(f"{tmp_path / 'absent.py'}:build"))
    saved = tmp_path / "saved"
    saved.mkdir()
    with pytest.raises(UnsupportedModelError, match=r"directory without saved_model\.pb"):
        inspect_source(saved)
    (saved / "saved_model.pb").write_bytes(b"")
    assert inspect_source(saved).kind is SourceKind.SAVED_MODEL
    (tmp_path / "m.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match="is not an HDF5 file"):
        inspect_source(tmp_path / "m.h5")
    (tmp_path / "m.tflite").write_bytes(b"TFL3")
    with pytest.raises(UnsupportedModelError, match="edgefleet bundle"):
        inspect_source(tmp_path / "m.tflite")


def test_image_folder_calibration(tmp_path: Path) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits().images[:12]  # 0..16
    folder = tmp_path / "images" / "some-class"
    folder.mkdir(parents=True)
    for i, image in enumerate(digits):
        Image.fromarray((image * 16).clip(0, 255).astype(np.uint8), mode="L").save(folder / f"{i:02}.png")
    data = load_data(tmp_path / "images", "calibration", need_y=False, input_shape=[None, 8, 8, 1])
    assert data.x.shape == (12, 8, 8, 1) and data.x.dtype == np.float32
    expected = (digits * 16).clip(0, 255).astype(np.uint8)[..., np.newaxis] / 255.0
    assert np.allclose(data.x, expected, atol=1e-6)
    signed = load_data(
        tmp_path / "images", "calibration", False, [None, 4, 4, 3], image_preprocessing="minus1to1"
    )
    assert signed.x.shape == (12, 4, 4, 3) and signed.x.min() >= -1.0 and signed.x.max() <= 1.0
    with pytest.raises(InputError, match=r"images need a model that declares a fixed \(N, H, W, 1 or 3\)"):
        load_data(tmp_path / "images", "calibration", need_y=False, input_shape=[None, 64])
    with pytest.raises(InputError, match="is a folder; evaluation data needs targets"):
        load_data(tmp_path / "images", "evaluation", need_y=True)
    (folder / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken\.png is not a readable image"):
        load_data(tmp_path / "images", "calibration", need_y=False, input_shape=[None, 8, 8, 1])
