"""The conversion report: a table for people, the same facts as JSON for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from converter.errors import InputError
from converter.metrics import TASK_METRICS
from protocol.manifest import Manifest, TaskKind, ValidationReport

if TYPE_CHECKING:
    from converter.gates import Gate
    from converter.results import Candidate, ConversionResult

_METRIC_NAMES = {
    "accuracy": "accuracy",
    "f1": "F1 (macro)",
    "mae": "MAE",
    "rmse": "RMSE",
    "smape": "sMAPE %",
}
RUNTIME_ORDER = ("tflite-runtime", "litert")


def report_dict(result: ConversionResult) -> dict[str, Any]:
    manifest = result.manifest
    return {
        "bundle": str(result.request.out),
        "name": manifest.name,
        "version": manifest.version,
        "task": manifest.task.value,
        "mode": manifest.quantization.value,
        "model_size": result.model_size,
        "bundle_size": result.bundle_size,
        "samples_size": manifest.files["samples.npz"].size if "samples.npz" in manifest.files else None,
        "bundle_ratio": round(_bundle_ratio(result), 4),
        "float32_weight_bytes": result.float32_weight_bytes,
        "float32_model_bytes": result.float32_model_bytes,
        "size_ratio": result.size_ratio,
        "key_id": result.key_id,
        "model_sha256": manifest.model_sha256,
        "validation": manifest.validation.model_dump(mode="json") if manifest.validation else None,
        "runtimes": {name: check.model_dump(mode="json") for name, check in manifest.runtimes.items()},
        "conversion": manifest.conversion.model_dump(mode="json") if manifest.conversion else None,
        "smoke": manifest.smoke.model_dump(mode="json"),
        "inputs": [spec.model_dump(mode="json") for spec in manifest.inputs],
        "outputs": [spec.model_dump(mode="json") for spec in manifest.outputs],
        "seconds": result.seconds,
        "warnings": result.warnings,
        "notes": result.notes,
    }


def write_report_json(result: ConversionResult, path: Path) -> None:
    try:
        path.write_text(json.dumps(report_dict(result), indent=2) + "\n")
    except OSError as exc:
        raise InputError(f"cannot write the report to {path}: {exc.strerror}") from exc


def report_table(result: ConversionResult) -> str:
    manifest = result.manifest
    lines = [f"{label:<16}{value}" for label, value in _summary_rows(result)]
    lines += _validation_lines(manifest.validation)
    lines += _runtime_lines(manifest)
    if len(result.candidates) > 1:
        from converter.gates import parse_gates

        conversion = manifest.conversion
        gates = parse_gates([f"{k}={v}" for k, v in (conversion.max_drop if conversion else {}).items()],
                            manifest.task)  # fmt: skip
        chosen = next((c for c in result.candidates if c.mode is manifest.quantization), None)
        lines.append("")
        lines.append(
            candidates_table(manifest.task, result.candidates, result.float32_model_bytes, gates, chosen)
        )
    lines.append("")
    lines.append(f"smoke samples   {manifest.smoke.samples}, atol {manifest.smoke.atol:.3g}")
    timing = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result.seconds.items())
    lines.append(f"time            {timing}")
    lines += [f"note: {note}" for note in result.notes]
    lines += [f"warning: {warning}" for warning in result.warnings]
    return "\n".join(lines)


def _summary_rows(result: ConversionResult) -> list[tuple[str, str]]:
    manifest = result.manifest
    rows: list[tuple[str, str]] = [
        ("bundle", f"{result.request.out} ({_bundle_size(result)}; signed by key {result.key_id})"),
        ("model", f"{manifest.name} {manifest.version}, {manifest.task.value}"),
        (
            "mode",
            manifest.quantization.value + (" (picked by --mode auto)" if len(result.candidates) > 1 else ""),
        ),
    ]
    size = f"{result.model_size:,} bytes"
    if result.size_ratio is not None:
        if result.float32_model_bytes:
            size += f" = {result.size_ratio:.2f}x the float32 model ({result.float32_model_bytes:,} bytes)"
        elif result.float32_weight_bytes:
            size += f" = {result.size_ratio:.2f}x the float32 weights ({result.float32_weight_bytes:,} bytes)"
    rows.append(("model.tflite", size))
    for spec in manifest.inputs + manifest.outputs:
        kind = "input" if spec in manifest.inputs else "output"
        quant = (
            f", scale {spec.quantization.scale:.4g} zero point {spec.quantization.zero_point}"
            if spec.quantization
            else ""
        )
        primary = " (primary)" if len(manifest.outputs) > 1 and spec.name == manifest.primary_output else ""
        rows.append((kind, f"{spec.name} {spec.shape} {spec.dtype}{quant}{primary}"))
    for name, pre in manifest.preprocessing.items():
        swap = f", channels {pre.caller_channel_order} -> {pre.channel_order}"
        order = swap if pre.reorders_channels else ""
        described = f", {pre.description}" if pre.description else ""
        rows.append(("preprocessing", f"{name}: {pre.method}{order}{described}"))
    conversion = manifest.conversion
    if conversion is not None:
        if conversion.recurrent:
            rows.append(("recurrent", conversion.recurrent))
        if conversion.float_layers:
            rows.append(("float layers", ", ".join(conversion.float_layers)))
        if conversion.max_drop:
            rows.append(("budget", ", ".join(f"{k} {v}" for k, v in conversion.max_drop.items())))
    return rows


def _bundle_size(result: ConversionResult) -> str:
    """The bundle against its model: what the smoke samples and the rest add."""
    samples = result.manifest.files.get("samples.npz")
    samples_size = samples.size if samples is not None else 0
    rest = result.bundle_size - result.model_size - samples_size
    return (
        f"{result.bundle_size:,} bytes, {_bundle_ratio(result):.2f}x the model: model.tflite "
        f"{result.model_size:,} + samples.npz {samples_size:,} "
        f"+ manifest, signature and archive framing {rest:,}"
    )


def _bundle_ratio(result: ConversionResult) -> float:
    return result.bundle_size / result.model_size if result.model_size else 0.0


def _validation_lines(validation: ValidationReport | None) -> list[str]:
    if validation is None:
        return []
    lines = ["", f"validation on {validation.samples} evaluation samples in {validation.runtime}"]
    if not any(key.endswith("_source") for key in validation.metrics):
        # A ready-made TFLite model (edgefleet bundle): no source model to compare with.
        for key, label in _METRIC_NAMES.items():
            if key in validation.metrics:
                lines.append(f"  {label:<16}{validation.metrics[key]:>10.4f}")
        return lines
    lines.append(f"  {'metric':<16}{'source':>10}{'converted':>12}{'change':>10}")
    for key, label in _METRIC_NAMES.items():
        if key in validation.metrics and f"{key}_source" in validation.metrics:
            source, converted = validation.metrics[f"{key}_source"], validation.metrics[key]
            change = round(converted - source, 4) + 0.0  # no "-0.0000"
            lines.append(f"  {label:<16}{source:>10.4f}{converted:>12.4f}{change:>+10.4f}")
    if validation.top1_agreement is not None:
        lines.append(f"  {'top-1 agreement':<16}{validation.top1_agreement:>22.2%}")
    if validation.snr_db is not None:
        lines.append(f"  {'output SNR':<16}{validation.snr_db:>19.1f} dB")
    lines.append(f"  {'max abs error':<16}{validation.max_abs_error:>22.6f}")
    lines.append(f"  {'mean abs error':<16}{validation.mean_abs_error:>22.6f}")
    return lines


def _runtime_lines(manifest: Manifest) -> list[str]:
    lines = ["", f"  {'runtime':<16}{'version':<10}{'loads':<7}{'p50 latency':>14}"]
    for name, check in manifest.runtimes.items():
        latency = f"{check.latency_ms_p50:.3f} ms" if check.latency_ms_p50 is not None else "-"
        lines.append(
            f"  {name:<16}{check.version or '?':<10}{'yes' if check.loads else 'no':<7}{latency:>14}"
        )
        if check.error:
            lines.append(f"    {check.error}")
    return lines


def candidates_table(
    task: TaskKind,
    candidates: list[Candidate],
    reference: int | None,
    gates: list[Gate],
    chosen: Candidate | None,
) -> str:
    """Every mode tried: size, ratio to float32, the task metric and its change, latency per runtime."""
    metric = TASK_METRICS[task][0]
    label = _METRIC_NAMES[metric]
    budget = ", ".join(str(g) for g in gates) or "none"
    header = (
        f"  {'mode':<9}{'size':>10}{'ratio':>7}{label:>11}{'change':>9}"
        + "".join(f"{name:>16}" for name in RUNTIME_ORDER)
        + "  result"
    )
    lines = [f"modes tried (budget: {budget}; latency = p50 of one sample on this host)", header]
    for c in candidates:
        size = f"{len(c.model):,}" if c.model else "-"
        ratio = f"{len(c.model) / reference:.2f}x" if c.model and reference else "-"
        value = change = "-"
        if c.validation is not None and metric in c.validation.metrics:
            converted = c.validation.metrics[metric]
            value = f"{converted:.4f}"
            if f"{metric}_source" in c.validation.metrics:
                change = f"{round(converted - c.validation.metrics[f'{metric}_source'], 4) + 0.0:+.4f}"
        latencies = ""
        for name in RUNTIME_ORDER:
            ran = [r for r in c.runs if r.info.name == name]
            if not ran:
                latencies += f"{'-':>16}"
            elif ran[0].check.loads and ran[0].check.latency_ms_p50 is not None:
                latencies += f"{ran[0].check.latency_ms_p50:>13.3f} ms"
            else:
                latencies += f"{'no load':>16}"
        if c is chosen:
            result = "CHOSEN"
        elif c.error is not None:
            result = _short(str(c.error))
        elif c.gate_failures:
            result = "over budget: " + "; ".join(c.gate_failures)
        elif c.mode.value == "int16x8":
            result = "ok (experimental: never picked by auto)"
        else:
            result = "ok"
        lines.append(f"  {c.mode.value:<9}{size:>10}{ratio:>7}{value:>11}{change:>9}{latencies}  {result}")
    return "\n".join(lines)


def _short(message: str, limit: int = 110) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."
