"""The scikit-learn and ONNX worked examples the whole way: trained, converted by ``edgefleet
convert`` (a joblib'd gradient-boosting classifier, a joblib'd StandardScaler + MLPRegressor
Pipeline, the classifier exported to ONNX), pushed to a real fleet, deployed to a real agent,
then asked over HTTP with raw evaluation rows: every output equals the TFLite runtime run
directly on the bundle's model, and stays close to the source framework's own predictions."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest
import requests

from protocol.bundle import read_bundle
from protocol.signing import TrustedKeys
from tests.support.foreign import convert_foreign, convert_torch, needs_foreign, needs_torch
from tests.support.processes import AgentProcess, FleetProcess, push_and_deploy
from tests.support.serving_requests import ask_and_compare

pytestmark = [pytest.mark.slow, needs_foreign]
TORCH_TOLERANCE = 0.05
"""The PyTorch forecaster (int8 chosen by auto) against the module's own outputs, relative to range."""

SOURCE_TOLERANCE = {"cancer-gb": 0.15, "diabetes-pipeline": 0.05, "cancer-onnx": 0.15}
"""Largest difference from the source's predictions, relative to the output's range on these rows:
float16 thresholds (the trees) and int8 (the MLP) move a few outputs; exactness against the
runtime is the check above."""


def _serving(agent: AgentProcess) -> tuple[str, str] | None:
    model = agent.health().get("model")
    return (str(model["name"]), str(model["version"])) if isinstance(model, dict) else None


def test_sklearn_and_onnx_models_deployed_to_an_agent_answer_as_the_runtime_does(
    tmp_path: Path,
    quick_stack: tuple[FleetProcess, AgentProcess],
    signing_keys: tuple[Path, Path],
) -> None:
    fleet, agent = quick_stack
    key, public = signing_keys
    runtime = agent.settings.get("runtime", {}).get("kind", "auto")
    for name, (folder, converted) in convert_foreign(tmp_path / "models", key).items():
        bundle = read_bundle(converted.bundle)
        manifest = bundle.verify(TrustedKeys.from_paths([public]))
        push_and_deploy(fleet.url, converted.bundle, manifest.name, manifest.version)
        wanted = (manifest.name, manifest.version)
        agent.wait_until(lambda: _serving(agent) == wanted, f"{name} to serve", 120)  # noqa: B023 - used at once
        x = np.load(folder / "evaluation.npz")["x"].astype(np.float32)
        with requests.Session() as session:
            # raw rows: the agent applies the recorded preprocessing (the pipeline's scaler)
            ask_and_compare(
                session, agent.url, manifest, bundle.members["model.tflite"], [x[:3]], runtime=runtime
            )
            answer = session.post(f"{agent.url}/v1/predict", json={"inputs": x[:40].tolist()}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = np.asarray(answer.json()["outputs"], np.float32)
        assert served.shape[0] == 40
        source = _source_predictions(name, folder, x[:40])
        span = max(float(np.ptp(source)), 1e-6)
        assert (
            float(np.max(np.abs(served.reshape(source.shape) - source))) <= SOURCE_TOLERANCE[name] * span
        ), name
        if manifest.task.value == "classification":
            agreement = float(np.mean(served.argmax(1) == source.argmax(1)))
            assert agreement >= 0.97, (name, agreement)


def _source_predictions(name: str, folder: Path, x: np.ndarray) -> np.ndarray:
    if name == "cancer-onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(["probabilities"], {session.get_inputs()[0].name: x})[0], np.float32)
    estimator = joblib.load(folder / "model.joblib")
    if hasattr(estimator, "predict_proba"):
        return np.asarray(estimator.predict_proba(x), np.float32)
    return np.asarray(estimator.predict(x), np.float32).reshape(-1, 1)


@needs_torch
def test_a_pytorch_forecaster_deployed_to_an_agent_answers_as_the_runtime_does(
    tmp_path: Path,
    quick_stack: tuple[FleetProcess, AgentProcess],
    signing_keys: tuple[Path, Path],
) -> None:
    fleet, agent = quick_stack
    key, public = signing_keys
    runtime = agent.settings.get("runtime", {}).get("kind", "auto")
    converted = convert_torch(tmp_path / "torch", key)
    bundle = read_bundle(converted.bundle)
    manifest = bundle.verify(TrustedKeys.from_paths([public]))
    assert manifest.conversion is not None and manifest.conversion.source == "torch"
    push_and_deploy(fleet.url, converted.bundle, manifest.name, manifest.version)
    agent.wait_until(lambda: _serving(agent) == (manifest.name, manifest.version), "the forecaster", 120)
    x = np.load(tmp_path / "torch" / "evaluation.npz")["x"].astype(np.float32)
    with requests.Session() as session:
        ask_and_compare(
            session, agent.url, manifest, bundle.members["model.tflite"], [x[:3]], runtime=runtime
        )
        answer = session.post(f"{agent.url}/v1/predict", json={"inputs": x[:40].tolist()}, timeout=30)
    assert answer.status_code == 200, answer.text
    served = np.asarray(answer.json()["outputs"], np.float32).reshape(-1, 1)
    # the module itself, in a subprocess: torch and TensorFlow-era processes stay apart
    source = _torch_predictions(tmp_path, x[:40])
    span = max(float(np.ptp(source)), 1e-6)
    assert float(np.max(np.abs(served - source))) <= TORCH_TOLERANCE * span


def _torch_predictions(folder: Path, x: np.ndarray) -> np.ndarray:
    import subprocess
    import sys

    np.save(folder / "rows.npy", x)
    code = (
        "import sys, numpy as np, torch\n"
        "from converter.examples_torch import forecaster\n"
        "module, _ = forecaster()\n"
        "x = torch.from_numpy(np.load(sys.argv[1]))\n"
        "with torch.no_grad(): np.save(sys.argv[2], module(x).numpy())\n"
    )
    out = folder / "module.npy"
    subprocess.run([sys.executable, "-c", code, str(folder / "rows.npy"), str(out)], check=True, timeout=300)
    return np.load(out).reshape(-1, 1)
