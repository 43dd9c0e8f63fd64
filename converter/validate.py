"""The runtime side of a conversion, run as ``python -m converter.validate JOB.json``.

Imports only ``runtime``, ``protocol`` and numpy: never TensorFlow, which breaks
tflite-runtime in the same process. One child per runtime, so a runtime that crashes on a model
is recorded as "does not load" instead of taking the others down. It loads the model the way a
device does and runs every sample through ``runtime.run_samples``, the one way the agent runs
samples too (its smoke test, its serving path), with the batching the model declares: a
fixed-batch model (a GRU exported at batch 1) in chunks of its batch, never resized. So the
smoke outputs recorded here are exactly what the agent's smoke test reproduces.

Job: ``model``, ``runtime``, and for a run ``evaluation`` and ``smoke`` (.npz files holding
``input_0``, ``input_1``, ...: one array per model input, batch first: real values, or values
already in the input's dtype). Writes ``result.json`` (the tensors as the manifest describes
them, the latency) and ``outputs.npz``: ``eval_J`` (every output J on the evaluation set),
``smoke_in_I`` (the smoke inputs in the model's input dtype: what ``samples.npz`` stores) and
``smoke_J`` (every output for those, as the agent's smoke test runs them), outputs dequantized
to float32.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from protocol.errors import EdgefleetError
from runtime import (
    LoadedModel,
    ModelLoadError,
    RuntimeName,
    dynamic_batch,
    load_model,
    model_specs,
    prepare_input,
    resolve_runtime,
    run_samples,
)

RESULT_FILE = "result.json"
OUTPUTS_FILE = "outputs.npz"
LATENCY_RUNS = 50
LATENCY_BUDGET_S = 5.0


def latency_p50_ms(model: LoadedModel, arrays: list[npt.NDArray[Any]]) -> float:
    """Median wall time of one invoke at the loaded shapes (one sample for a dynamic batch, the
    model's own batch otherwise), after a warm-up run."""
    batch = [
        np.resize(a[:1], (shape[0], *a.shape[1:])) for a, shape in zip(arrays, model.shapes, strict=True)
    ]
    with model.lock:
        model.invoke(batch)
        times = []
        deadline = time.monotonic() + LATENCY_BUDGET_S
        for _ in range(LATENCY_RUNS):
            started = time.perf_counter()
            model.invoke(batch)
            times.append(time.perf_counter() - started)
            if time.monotonic() > deadline:
                break
    return statistics.median(times) * 1000.0


def _load_arrays(path: str, model: LoadedModel, role: str) -> list[npt.NDArray[Any]]:
    with np.load(path) as archive:
        arrays = [archive[f"input_{i}"] for i in range(len(model.inputs)) if f"input_{i}" in archive]
    if len(arrays) != len(model.inputs):
        raise ModelLoadError(
            f"the {role} data holds {len(arrays)} inputs; the model takes {len(model.inputs)}"
        )
    return arrays


def _run(model: LoadedModel, job: dict[str, Any]) -> tuple[dict[str, npt.NDArray[Any]], float]:
    dynamic = dynamic_batch(model)
    evaluation = _load_arrays(job["evaluation"], model, "evaluation")
    smoke = [
        prepare_input(a, d)
        for a, d in zip(_load_arrays(job["smoke"], model, "smoke"), model.inputs, strict=True)
    ]
    arrays: dict[str, npt.NDArray[Any]] = {}
    for j, out in enumerate(run_samples(model, evaluation, dynamic_batch=dynamic)):
        arrays[f"eval_{j}"] = out
    for i, array in enumerate(smoke):
        arrays[f"smoke_in_{i}"] = array
    for j, out in enumerate(run_samples(model, smoke, dynamic_batch=dynamic)):
        arrays[f"smoke_{j}"] = out
    return arrays, latency_p50_ms(model, smoke)


def validate(job: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    runtime = cast(RuntimeName, job["runtime"])
    info = resolve_runtime(runtime)
    base: dict[str, Any] = {"runtime": runtime, "version": info.version}
    try:
        model = load_model(Path(job["model"]).read_bytes(), runtime=runtime, threads=1)
        inputs, outputs = model_specs(model)
        tensors = {
            "inputs": [s.model_dump(mode="json") for s in inputs],
            "outputs": [s.model_dump(mode="json") for s in outputs],
        }
        if job.get("inspect_only"):  # a ready-made model: what does it take and give?
            return {**base, "loads": True, "error": None, **tensors}
        arrays, latency = _run(model, job)
    except EdgefleetError as exc:
        return {**base, "loads": False, "error": str(exc)}
    except (ValueError, RuntimeError) as exc:  # a model that loads but fails at invoke
        return {
            **base,
            "loads": False,
            "error": f"{info} cannot run the model: {str(exc).strip().splitlines()[0]}",
        }
    np.savez(out_dir / OUTPUTS_FILE, **arrays)
    return {**base, "loads": True, "error": None, "latency_ms_p50": round(latency, 4), **tensors}


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
