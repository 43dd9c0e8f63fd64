"""Make real TFLite models and signed bundles for the agent's tests.

TensorFlow and tflite-runtime cannot share a process, so the Keras -> TFLite conversion runs in
a subprocess (one for every model asked for, so TensorFlow is imported once). The bundle itself
is built here with the protocol's own functions, its smoke samples computed with the agent's
runtime and the shared quantization arithmetic: what the converter does, in miniature.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converter.baseline import baseline_stats
from protocol.bundle import LABELS, MODEL, SAMPLES, bundle_bytes, file_entries
from protocol.manifest import (
    Manifest,
    Quantization,
    QuantizationMode,
    SmokeTest,
    TaskKind,
    TensorSpec,
    ToolVersions,
)
from protocol.signing import sign
from protocol.tensors import dequantize, quantize
from runtime import TensorDetail, load_model

_CONVERT = textwrap.dedent(
    """
    import json, os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import keras
    jobs = json.loads(sys.argv[1])
    for job in jobs:
        model = keras.models.load_model(job["keras"])
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if job["mode"] == "int8":
            calibration = np.load(job["calibration"])["x"].astype(np.float32)
            def representative():
                for row in calibration[:100]:
                    yield [row[np.newaxis]]
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        with open(job["out"], "wb") as handle:
            handle.write(converter.convert())
    """
)


def convert_to_tflite(jobs: list[tuple[Path, str, Path]]) -> None:
    """Convert each (model folder, mode "int8"|"float", output .tflite) in one subprocess."""
    spec = [
        {
            "keras": str(folder / "model.keras"),
            "calibration": str(folder / "calibration.npz"),
            "mode": mode,
            "out": str(out),
        }
        for folder, mode, out in jobs
    ]
    result = subprocess.run(
        [sys.executable, "-c", _CONVERT, json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"TFLite conversion failed:\n{result.stderr[-3000:]}")


def _spec(detail: TensorDetail) -> TensorSpec:
    quantized = detail.dtype.kind in "iu" and detail.scale > 0
    return TensorSpec(
        name=detail.name,
        shape=[-1, *detail.shape[1:]],
        dtype=str(detail.dtype),
        quantization=Quantization(scale=detail.scale, zero_point=detail.zero_point) if quantized else None,
    )


def build_bundle(
    tflite: bytes,
    samples_x: npt.NDArray[np.float32],
    key: Ed25519PrivateKey,
    *,
    name: str = "digits",
    version: str = "1.0.0",
    labels: list[str] | None = None,
    atol: float = 0.02,
    spoil_samples: bool = False,
) -> bytes:
    """A signed bundle for ``tflite``; ``spoil_samples`` records outputs the model does not give."""
    model = load_model(tflite, runtime="tflite-runtime")
    inputs = [_spec(d) for d in model.inputs]
    outputs = [_spec(d) for d in model.outputs]
    x = samples_x.astype(np.float32)
    raw = model.run([quantize(x, inputs[0])])
    y = dequantize(raw[0], outputs[0])
    if spoil_samples:
        y = np.roll(y, 1, axis=-1) + 0.5
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y.astype(np.float32))
    labels = labels if labels is not None else [str(d) for d in range(10)]
    files = {
        MODEL: tflite,
        SAMPLES: buffer.getvalue(),
        LABELS: "".join(f"{label}\n" for label in labels).encode(),
    }
    manifest = Manifest(
        name=name,
        version=version,
        task=TaskKind.CLASSIFICATION,
        created_at=datetime.now(UTC),
        files=file_entries(files),
        inputs=inputs,
        outputs=outputs,
        labels=labels,
        quantization=QuantizationMode.INT8 if inputs[0].quantization else QuantizationMode.NONE,
        tools=ToolVersions(edgefleet="test"),
        smoke=SmokeTest(samples=len(x), atol=atol),
        baseline=baseline_stats(TaskKind.CLASSIFICATION, x, dequantize(raw[0], outputs[0])),
    )
    manifest_bytes = manifest.model_dump_json(indent=2).encode()
    return bundle_bytes(manifest_bytes, sign(key, manifest_bytes), files)
