"""The runtime side of a conversion, run as ``python -m converter.validate JOB.json``.

Imports only ``agent.runtime``, ``protocol`` and numpy: never TensorFlow, which breaks
tflite-runtime in the same process. One child per runtime, so a runtime that crashes on a model
is recorded as "does not load" instead of taking the others down. It loads the model the way a
device does, runs the evaluation and smoke inputs (quantized with ``protocol.tensors``, outputs
dequantized the same way the agent will) and measures per-sample latency. It writes
``result.json`` and ``outputs.npz`` (``eval``, ``smoke``, ``smoke_batch``: the first output,
dequantized float32; the smoke samples run one at a time and as one batch).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast, get_args

import numpy as np
import numpy.typing as npt

from agent.runtime import LoadedModel, ModelLoadError, RuntimeName, TensorDetail, load_model, resolve_runtime
from protocol.errors import EdgefleetError
from protocol.manifest import Quantization, TensorDType, TensorSpec
from protocol.tensors import dequantize, quantize

RESULT_FILE = "result.json"
OUTPUTS_FILE = "outputs.npz"
EVAL_BATCH = 256
LATENCY_RUNS = 50
LATENCY_BUDGET_S = 5.0


def tensor_spec(detail: TensorDetail, dynamic_batch: bool) -> TensorSpec:
    """The manifest's view of a runtime tensor; quantization only for quantized integer tensors."""
    dtype = str(detail.dtype)
    if dtype not in get_args(TensorDType):
        raise ModelLoadError(f"tensor {detail.name} has dtype {dtype}, which edgefleet cannot describe")
    quantized = detail.scale > 0 and np.issubdtype(detail.dtype, np.integer)
    shape = list(detail.shape)
    if dynamic_batch and shape:
        shape[0] = -1
    return TensorSpec(
        name=detail.name,
        shape=shape,
        dtype=cast(TensorDType, dtype),
        quantization=Quantization(scale=detail.scale, zero_point=detail.zero_point) if quantized else None,
    )


def run_outputs(
    model: LoadedModel, x: npt.NDArray[np.float32], input_spec: TensorSpec, output_spec: TensorSpec
) -> npt.NDArray[np.float32]:
    """Dequantized first output for every row of ``x``, in batches (of the model's own batch size
    when the model fixes it, e.g. a recurrent model exported with batch size 1)."""
    size = EVAL_BATCH if input_spec.shape[0] == -1 else max(1, input_spec.shape[0])
    if input_spec.shape[0] != -1 and len(x) % size:
        raise ModelLoadError(f"the model takes batches of exactly {size}; {len(x)} samples do not divide")
    parts = []
    for start in range(0, len(x), size):
        batch = quantize(x[start : start + size], input_spec)
        parts.append(dequantize(model.run([batch])[0], output_spec))
    return np.concatenate(parts, axis=0)


def latency_p50_ms(model: LoadedModel, sample: npt.NDArray[Any]) -> float:
    """Median wall time of one single-sample inference, after a warm-up run."""
    model.run([sample])
    times = []
    deadline = time.monotonic() + LATENCY_BUDGET_S
    for _ in range(LATENCY_RUNS):
        started = time.perf_counter()
        model.run([sample])
        times.append(time.perf_counter() - started)
        if time.monotonic() > deadline:
            break
    return statistics.median(times) * 1000.0


def validate(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    runtime = cast(RuntimeName, job["runtime"])
    info = resolve_runtime(runtime)
    base: dict[str, Any] = {"runtime": runtime, "version": info.version}
    try:
        model = load_model(Path(job["model"]).read_bytes(), runtime=runtime, threads=1)
        inputs = [tensor_spec(d, job["dynamic_batch"]) for d in model.inputs]
        outputs = [tensor_spec(d, job["dynamic_batch"]) for d in model.outputs]
        if job.get("inspect_only"):  # a ready-made model: what does it take and give?
            return {
                **base,
                "loads": True,
                "error": None,
                "inputs": [s.model_dump(mode="json") for s in inputs],
                "outputs": [s.model_dump(mode="json") for s in outputs],
            }
        evaluation = np.load(job["evaluation"])
        smoke = np.load(job["smoke"])
        eval_out = run_outputs(model, evaluation, inputs[0], outputs[0])
        # Smoke outputs one sample at a time, the way a device serves requests.
        smoke_out = np.concatenate(
            [run_outputs(model, smoke[i : i + 1], inputs[0], outputs[0]) for i in range(len(smoke))]
        )
        # ... and as one batch, the way the agent's smoke test runs them.
        smoke_batch = run_outputs(model, smoke, inputs[0], outputs[0])
        latency = latency_p50_ms(model, quantize(evaluation[:1], inputs[0]))
    except EdgefleetError as exc:
        return {**base, "loads": False, "error": str(exc)}
    except (ValueError, RuntimeError) as exc:  # a model that loads but fails at invoke
        return {
            **base,
            "loads": False,
            "error": f"{info} cannot run the model: {str(exc).strip().splitlines()[0]}",
        }
    np.savez(out_dir / OUTPUTS_FILE, eval=eval_out, smoke=smoke_out, smoke_batch=smoke_batch)
    return {
        **base,
        "loads": True,
        "error": None,
        "latency_ms_p50": round(latency, 4),
        "inputs": [s.model_dump(mode="json") for s in inputs],
        "outputs": [s.model_dump(mode="json") for s in outputs],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m converter.validate JOB.json", file=sys.stderr)
        return 2
    job: dict[str, Any] = json.loads(Path(argv[0]).read_text())
    out_dir = Path(job["out_dir"])
    result = validate(job, out_dir)
    (out_dir / RESULT_FILE).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
