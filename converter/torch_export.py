"""PyTorch models in, step one: ``python -m converter.torch_export JOB.json`` calls the factory
(``torch:module:function`` / ``torch:file.py:function``, returning ``(nn.Module, example)``),
exports the module to ONNX with ``torch.onnx.export`` (the torch.export-based exporter, batch
dimension dynamic), checks the export against the module on the evaluation inputs in
onnxruntime, and writes the module's own outputs on them: the reference every converted mode is
validated against. The TensorFlow worker then converts the ONNX file as any other.

Its own process because PyTorch and TensorFlow do not share one: on Linux, torch's training
path imports triton, whose extension crashes (SIGSEGV) once TensorFlow is loaded.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ONNX_FILE = "torch.onnx"
REFERENCE_FILE = "torch_reference.npy"
AGREEMENT = 1e-4
BATCH = 256


def main(argv: list[str]) -> int:
    job = json.loads(Path(argv[0]).read_text())
    out = Path(job["out_dir"])
    try:
        facts = run(job, Path(job["work"]))
    except ExportProblemError as exc:
        (out / "result.json").write_text(json.dumps({"ok": False, "message": str(exc)}))
        return 1
    (out / "result.json").write_text(json.dumps({"ok": True, **facts}))
    return 0


class ExportProblemError(Exception):
    """The factory, its module or its export cannot be used; the message says why."""


def run(job: dict[str, Any], work: Path) -> dict[str, Any]:
    import torch

    from converter.onnx_lower import run_onnx
    from converter.worker_load import InputProblemError, call_factory

    try:
        made = call_factory(job["model"])
    except InputProblemError as exc:
        raise ExportProblemError(str(exc)) from exc
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module)):
        raise ExportProblemError(
            f"the factory {job['model']} returned {type(made).__name__}; a PyTorch factory returns "
            "(nn.Module, example input tensor)"
        )
    module, example = made
    if not isinstance(example, torch.Tensor):
        raise ExportProblemError(f"the example input is a {type(example).__name__}, not a torch.Tensor")
    evaluation = np.load(job["evaluation"]).astype(np.float32)
    if tuple(example.shape[1:]) != evaluation.shape[1:]:
        raise ExportProblemError(
            f"the example input has shape {tuple(example.shape)} but the evaluation samples are "
            f"{evaluation.shape[1:]}"
        )
    module.eval()
    target = work / ONNX_FILE
    _export(torch, module, example, target)
    with torch.no_grad():
        outputs = [
            _first(module(torch.from_numpy(evaluation[i : i + BATCH])))
            for i in range(0, len(evaluation), BATCH)
        ]
    reference = np.concatenate([o.detach().numpy() for o in outputs]).astype(np.float32)
    import onnx

    exported = run_onnx(onnx.load(str(target)), evaluation)
    difference = float(np.max(np.abs(exported.reshape(reference.shape) - reference)))
    if difference > AGREEMENT * max(float(np.ptp(reference)), 1.0):
        raise ExportProblemError(
            f"the ONNX export of {type(module).__name__} differs from the module by up to {difference:.3g}"
        )
    np.save(work / REFERENCE_FILE, reference)
    return {"module": type(module).__name__, "torch": torch.__version__, "export_difference": difference}


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, (tuple, list)) else value


def _export(torch: Any, module: Any, example: Any, target: Path) -> None:
    batch = torch.cat([example[:1], example[:1]])  # torch.export specialises a batch of 1
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module, (batch,), str(target), dynamo=True, input_names=["input"], output_names=["output"],
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=18,
            )  # fmt: skip
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ExportProblemError(
            f"torch.onnx.export could not export {type(module).__name__}: {first}"
        ) from exc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
