"""ONNX files and scikit-learn estimators in: the rewrite of ONNX-ML ops checked op by op against
onnxruntime and the estimators, refusals that name the unsupported step, the install command for
a missing extra, and the worked examples converted by the real CLI (each bundle then installs on
an agent: ``every_bundle_installs_on_an_agent``)."""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from converter import extras
from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys
from tests.support.converter import Converted, run_cli
from tests.support.foreign import convert_foreign, convert_torch, needs_foreign, needs_torch


def _estimators() -> dict[str, tuple[Any, Any, Any]]:
    from sklearn.compose import ColumnTransformer
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, StandardScaler

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    xb, yb = load_breast_cancer(return_X_y=True)
    xb = xb.astype(np.float32)
    xc = x.copy()
    xc[:, 0] = np.round(xc[:, 0])
    columns = ColumnTransformer(
        [("onehot", OneHotEncoder(handle_unknown="ignore"), [0]), ("scale", StandardScaler(), [1, 2, 3])]
    )
    yr = x[:, 3] * 2 + x[:, 0]
    return {
        "logistic-binary": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), xb, yb),
        "logistic-multiclass": (LogisticRegression(max_iter=2000), x, y),
        "linear": (LinearRegression(), x[:, :3], yr),
        "minmax-ridge": (make_pipeline(MinMaxScaler(), Ridge()), x[:, :3], yr),
        "mlp-classifier": (MLPClassifier(max_iter=300, random_state=0), x, y),
        "mlp-regressor": (MLPRegressor(max_iter=300, random_state=0), x[:, :3], yr),
        "forest-binary": (RandomForestClassifier(20, max_depth=6, random_state=0), xb, yb),
        "forest-multiclass": (RandomForestClassifier(10, max_depth=4, random_state=0), x, y),
        "boosting-binary": (GradientBoostingClassifier(n_estimators=30, random_state=0), xb, yb),
        "boosting-multiclass": (GradientBoostingClassifier(n_estimators=10, random_state=0), x, y),
        "boosting-regressor": (GradientBoostingRegressor(n_estimators=20, random_state=0), x[:, :3], yr),
        "forest-regressor": (RandomForestRegressor(10, max_depth=5, random_state=0), x[:, :3], yr),
        "onehot-logistic": (make_pipeline(columns, LogisticRegression(max_iter=2000)), xc, y),
    }


@needs_foreign
@pytest.mark.parametrize("name", list(_estimators()))
def test_the_rewritten_graph_computes_what_the_estimator_does(name: str) -> None:
    from converter.onnx_lower import ML_DOMAIN, lower, run_onnx
    from converter.worker_foreign import _sklearn_predict, _to_onnx

    estimator, x, y = _estimators()[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(x, y)
    exported = _to_onnx(estimator, x)
    assert any(node.domain == ML_DOMAIN for node in exported.graph.node) or name.startswith("mlp")
    lowered = lower(exported)
    assert all(node.domain in ("", "ai.onnx") for node in lowered.graph.node)
    assert len(lowered.graph.output) == 1
    expected = _sklearn_predict(estimator)(x)
    got = run_onnx(lowered, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=2e-5 * max(1.0, float(np.ptp(expected))), rtol=1e-5)


@needs_foreign
def test_an_onnx_ml_op_without_a_rewrite_is_refused_by_name() -> None:
    from sklearn.datasets import load_iris
    from sklearn.svm import SVR

    from converter.onnx_lower import LoweringError, lower
    from converter.worker_foreign import _to_onnx

    x, y = load_iris(return_X_y=True)
    model = SVR().fit(x.astype(np.float32), y)
    with pytest.raises(LoweringError, match=r"ONNX-ML op SVMRegressor \(.*\) has no TFLite rewrite"):
        lower(_to_onnx(model, x.astype(np.float32)))


@needs_foreign
def test_a_step_skl2onnx_cannot_export_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 signing_keys: tuple[Path, Path]) -> None:  # fmt: skip
    import joblib
    from sklearn.linear_model import LinearRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = np.random.default_rng(0).random((60, 3)).astype(np.float32)
    model = make_pipeline(FunctionTransformer(np.log1p), LinearRegression()).fit(x, x[:, 0])
    joblib.dump(model, tmp_path / "model.joblib")
    np.savez(tmp_path / "data.npz", x=x, y=x[:, :1])
    run = run_cli(capsys, [
        "convert", str(tmp_path / "model.joblib"), "--calibration", str(tmp_path / "data.npz"),
        "--evaluation", str(tmp_path / "data.npz"), "--mode", "none", "--name", "f", "--version", "1.0.0",
        "--task", "regression", "--key", str(signing_keys[0]), "--out", str(tmp_path / "f.bundle"),
    ])  # fmt: skip
    assert run.code == 2
    assert "skl2onnx cannot export this Pipeline (steps: FunctionTransformer, LinearRegression)" in run.stderr
    assert not (tmp_path / "f.bundle").exists()


def test_a_missing_extra_gives_the_exact_install_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], signing_keys: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda n, *a: None if n == "onnx2tf" else real(n))
    (tmp_path / "model.onnx").write_bytes(b"not read: the extra is checked first")
    np.savez(tmp_path / "data.npz", x=np.zeros((4, 3), np.float32), y=np.zeros(4, np.float32))
    models = (
        ("model.onnx", "converter-onnx"), ("model.joblib", "converter-sklearn"),
        ("torch:converter.examples_torch:forecaster", "converter-torch"),
    )  # fmt: skip
    for model, extra in models:
        if not model.startswith("torch:"):
            (tmp_path / model).write_bytes(b"x")
        run = run_cli(capsys, [
            "convert", model if model.startswith("torch:") else str(tmp_path / model),
            "--calibration", str(tmp_path / "data.npz"),
            "--evaluation", str(tmp_path / "data.npz"), "--mode", "none", "--name", "m", "--version", "1.0.0",
            "--task", "regression", "--key", str(signing_keys[0]), "--out", str(tmp_path / "m.bundle"),
        ])  # fmt: skip
        assert run.code == 2
        assert re.search(r"\(missing: [^)]*onnx2tf", run.stderr), run.stderr
        assert (
            f"install it with: pip install 'edgefleet[{extra}]' && pip install --no-deps tf-keras==2.21.0"
            in run.stderr
        )


def test_convert_help_lists_every_accepted_model_and_the_pickle_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        run_cli(capsys, ["convert", "--help"])
    text = capsys.readouterr().out
    kinds = (".keras", ".h5", "SavedModel", "module:fn", ".onnx", ".joblib", ".pkl", "torch:pkg.module:fn")
    for kind in kinds:
        assert kind in text, kind
    assert "loading a pickle or joblib file runs code" in text


@pytest.fixture(scope="module")
def foreign(
    tmp_path_factory: pytest.TempPathFactory, signing_keys: tuple[Path, Path]
) -> dict[str, Converted]:
    converted = convert_foreign(tmp_path_factory.mktemp("foreign"), signing_keys[0])
    return {name: run for name, (_, run) in converted.items()}


@needs_foreign
@pytest.mark.slow
def test_the_worked_examples_convert_within_budget(
    foreign: dict[str, Converted], signing_keys: tuple[Path, Path]
) -> None:
    cancer = foreign["cancer-gb"].report
    rows = {row["mode"]: row for row in cancer["conversion"]["candidates"]}
    assert cancer["conversion"]["source"] == "sklearn"
    assert set(rows) == {"none", "float16", "dynamic", "int8", "int16x8"}
    # Trees on raw features: one int8 scale for features from 0.05 to 4,000 breaks the splits;
    # auto measures that and keeps a float mode.
    assert not rows["int8"]["ok"] and "accuracy dropped" in rows["int8"]["error"]
    assert cancer["mode"] in ("none", "float16")
    metrics = cancer["validation"]["metrics"]
    assert metrics["accuracy_source"] - metrics["accuracy"] <= 0.01
    diabetes = foreign["diabetes-pipeline"].report
    assert diabetes["conversion"]["source"] == "sklearn"
    # The pipeline's StandardScaler is the recorded preprocessing: int8 inputs hold scaled
    # features, and int8 stays inside the 2 % MAE budget (auto's pick).
    manifest = read_bundle(foreign["diabetes-pipeline"].bundle).verify(
        TrustedKeys.from_paths([signing_keys[1]])
    )
    assert manifest.preprocessing["X"].method == "standardize"
    assert any("StandardScaler became the recorded preprocessing" in n for n in diabetes["notes"])
    mae = diabetes["validation"]["metrics"]
    assert mae["mae"] <= mae["mae_source"] * 1.02
    assert diabetes["mode"] == "int8"
    onnx = foreign["cancer-onnx"].report
    assert onnx["conversion"]["source"] == "onnx" and onnx["mode"] == "float16"
    assert onnx["validation"]["metrics"]["accuracy"] == pytest.approx(metrics["accuracy_source"], abs=0.01)


@needs_torch
@pytest.mark.slow
def test_a_pytorch_forecaster_converts_validated_against_the_module(
    tmp_path: Path, signing_keys: tuple[Path, Path]
) -> None:
    converted = convert_torch(tmp_path, signing_keys[0])
    report = converted.report
    assert report["conversion"]["source"] == "torch"
    rows = {row["mode"]: row for row in report["conversion"]["candidates"]}
    assert rows["none"]["ok"] and rows["int8"]["model_size"] < rows["none"]["model_size"]
    metrics = report["validation"]["metrics"]
    assert metrics["mae"] <= metrics["mae_source"] * 1.03
    # the source metric is the module's own: a forecaster this small is within ~20 sunspots
    assert 5.0 < metrics["mae_source"] < 30.0
    assert any("PyTorch module exported to ONNX" in note for note in report["notes"])
