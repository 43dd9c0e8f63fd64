"""The parent's side of PyTorch models in: the export child (``converter.torch_export``) run
before the TensorFlow worker, its failures turned into ``InputError``."""

from __future__ import annotations

from pathlib import Path

from converter.errors import InputError
from converter.request import ConversionRequest, Progress
from converter.source import SourceModel
from converter.subproc import run_module


def export_torch(request: ConversionRequest, source: SourceModel, work: Path, progress: Progress) -> None:
    """Leave ``torch.onnx`` and the module's outputs on the evaluation set in ``work``."""
    progress(f"exporting the PyTorch module of {source.reference} to ONNX in a PyTorch subprocess...")
    job = {"model": source.reference, "evaluation": str(work / "evaluation.npy"), "work": str(work)}
    outcome = run_module("converter.torch_export", job, work / "torch-export", request.timeout)
    result = outcome.result
    if outcome.timed_out:
        raise InputError(f"exporting {source.reference} took longer than --timeout {request.timeout:g} s")
    if result is None:
        raise InputError(
            f"the PyTorch export of {source.reference} failed: {outcome.last_words or 'no result'}"
        )
    if not result.get("ok"):
        raise InputError(str(result.get("message")))
    progress(
        f"  {result['module']} exported (torch {result['torch']}; ONNX vs module on the evaluation "
        f"set: up to {result['export_difference']:.2g})"
    )
