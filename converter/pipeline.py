"""``convert(request) -> result``: the whole conversion, as the CLI and other tools call it.

A short sequence of named phases, each its own module:

1. inspect (``converter.plan``): output path, key, budget, options, the source model's kind;
2. load data (``converter.inputs``): calibration and evaluation data and labels, checked;
3. convert (``converter.conversion``): every asked mode in a TensorFlow subprocess
   (``converter.worker``; a crash or hang costs that mode only);
4. validate (``converter.measure``): each candidate in each installed TFLite runtime, one
   subprocess each (``converter.validate``), compared with the source model and the budget;
5. choose (``converter.choose``): the asked mode, or auto's smallest-then-fastest in budget;
6. package (``converter.package``, shared with ``edgefleet bundle``): baseline statistics,
   smoke samples, manifest, signature, atomic write.

This process never imports TensorFlow or a TFLite runtime.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from converter import data as data_mod
from converter import preprocessing
from converter.baseline import baseline_stats
from converter.choose import choose, conversion_report, explain_choice
from converter.conversion import WorkerOutput, convert_modes, layer_report, write_worker_arrays
from converter.inputs import Inputs, check_labels, load_inputs
from converter.measure import (
    EVALUATION_FILE,
    SMOKE_FILE,
    measure_all,
    recurrent_int8_warning,
    write_samples_for_runtime,
)
from converter.package import estimated_sample_bytes, package, smoke_count
from converter.plan import inspect_request
from converter.request import ConversionRequest, Progress, quiet
from converter.results import Candidate, ConversionResult
from converter.sklearn_head import adopt_head_scaler
from converter.source import SourceKind
from converter.torch_run import export_torch
from protocol.manifest import Preprocessing, QuantizationMode, TaskKind, ValidationReport

__all__ = ["ConversionRequest", "ConversionResult", "convert"]


def convert(request: ConversionRequest, progress: Progress = quiet) -> ConversionResult:
    """Run the whole conversion; raise a ``ConverterError`` (or a protocol key error) on failure."""
    started = time.monotonic()
    warnings: list[str] = []
    notes: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        progress(f"warning: {message}")

    progress(
        f"checking inputs for {request.name} {request.version} ({request.task.value}, mode {request.mode})"
    )
    plan = inspect_request(request)
    request, source = adopt_head_scaler(request, plan.source, notes.append)
    plan = replace(plan, source=source)
    inputs = load_inputs(request, plan.source, plan.calibrated, warn)
    seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgefleet-convert-") as tmp:
        work = Path(tmp)
        write_worker_arrays(inputs, work)
        if plan.source.kind is SourceKind.TORCH:
            export_torch(request, plan.source, work, progress)
        output = convert_modes(request, plan.source, inputs, plan.modes, work=work, progress=progress)
        _write_validation_arrays(request, inputs, output, work, notes.append)
        seconds["convert"] = round(output.seconds, 2)
        output_shape: list[int | None] = output.facts["output_shapes"][0]
        targets = data_mod.check_targets(inputs.evaluation, request.task, output_shape)
        check_labels(request, inputs.labels, output_shape)
        validate_started = time.monotonic()
        candidates = measure_all(
            request, output, modes=plan.modes, targets=targets, gates=plan.gates, work=work, progress=progress
        )
        seconds["validate"] = round(time.monotonic() - validate_started, 2)
        reference = output.modes[QuantizationMode.NONE].model

        def debug_layers() -> str:
            progress("int8 is over budget: running TensorFlow's quantization debugger per layer...")
            return layer_report(request, plan.source, inputs, work)

        chosen = choose(request, candidates, plan.gates, reference, debug_layers)
        recurrent = recurrent_int8_warning(request, chosen, candidates, output, work=work, progress=progress)
    if recurrent is not None:
        warn(recurrent)
    recorded = preprocessing.recorded(inputs.preprocessing, output.facts.get("normalization", []), warn)
    if request.mode == "auto":
        notes.append(explain_choice(request, chosen, candidates, plan.gates))
    assert chosen.validation is not None and chosen.model is not None
    baseline = baseline_stats(
        request.task, inputs.caller_evaluation.x, chosen.primary_eval(), input_features=request.input_stats
    )
    _check_accuracy(request.task, chosen.validation, warn)
    notes.extend(output.facts.get("changes", []))
    conversion = conversion_report(
        request, source_kind=plan.source.kind.value, facts=output.facts, chosen=chosen,
        candidates=candidates, gates=plan.gates, reference=reference,
    )  # fmt: skip
    packaged = package(
        request, chosen=chosen, facts=output.facts, baseline=baseline, labels=inputs.labels,
        conversion=conversion, preprocessing=_keyed(chosen, recorded), signing_key=plan.signing_key,
        force=request.force, note=notes.append, warn=warn, progress=progress,
    )  # fmt: skip
    seconds["total"] = round(time.monotonic() - started, 2)
    return ConversionResult(
        request=request,
        manifest=packaged.manifest,
        key_id=packaged.key_id,
        model_size=len(chosen.model),
        bundle_size=packaged.bundle_size,
        float32_weight_bytes=output.facts.get("float32_weight_bytes"),
        seconds=seconds,
        warnings=warnings,
        notes=notes,
        float32_model_bytes=len(reference) if reference else None,
        candidates=candidates,
    )


def _keyed(chosen: Candidate, recorded: Preprocessing | None) -> dict[str, Preprocessing]:
    """convert's single input's entry under the converted model's input name."""
    assert chosen.primary is not None
    return {} if recorded is None else {chosen.primary.inputs[0].name: recorded}


def _write_validation_arrays(
    request: ConversionRequest, inputs: Inputs, output: WorkerOutput, work: Path, note: Progress
) -> None:
    """The evaluation set and the smoke samples as the validator reads them; as many smoke samples
    as an estimate says fit ``samples.npz``'s limit for the smallest converted model (inputs as
    they compress, outputs as float32); packaging then keeps what really fits."""
    x = inputs.evaluation.x
    outputs = sum(int(np.prod([d or 1 for d in shape[1:]])) for shape in output.facts["output_shapes"])
    sample_bytes = estimated_sample_bytes([x[: request.smoke_samples]], outputs)
    sizes = [len(o.model) for o in output.modes.values() if o.model is not None]
    count = smoke_count(request.smoke_samples, sample_bytes, min(sizes, default=0))
    if count < request.smoke_samples:
        note(
            f"{count} smoke samples instead of --smoke-samples {request.smoke_samples}: "
            f"about {sample_bytes:,} bytes per sample would make samples.npz too large"
        )
    write_samples_for_runtime(work / EVALUATION_FILE, [x])
    write_samples_for_runtime(work / SMOKE_FILE, [x[:count]])


def _check_accuracy(task: TaskKind, validation: ValidationReport, warn: Progress) -> None:
    if task is TaskKind.CLASSIFICATION and "accuracy_source" in validation.metrics:
        drop = validation.metrics["accuracy_source"] - validation.metrics["accuracy"]
        if drop > 0.02:
            warn(f"accuracy dropped {drop * 100:.1f} points from the source model")
