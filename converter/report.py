"""The conversion report: a table for people, the same facts as JSON for CI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from converter.errors import InputError
from converter.pipeline import ConversionResult

_METRIC_NAMES = {"accuracy": "accuracy", "mae": "MAE"}


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
        "float32_weight_bytes": result.float32_weight_bytes,
        "size_ratio": result.size_ratio,
        "key_id": result.key_id,
        "model_sha256": manifest.model_sha256,
        "validation": manifest.validation.model_dump(mode="json") if manifest.validation else None,
        "runtimes": {name: check.model_dump(mode="json") for name, check in manifest.runtimes.items()},
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
    rows: list[tuple[str, str]] = [
        ("bundle", f"{result.request.out} ({result.bundle_size:,} bytes, signed by key {result.key_id})"),
        ("model", f"{manifest.name} {manifest.version}, {manifest.task.value}"),
        ("mode", manifest.quantization.value),
    ]
    size = f"{result.model_size:,} bytes"
    if result.size_ratio is not None and result.float32_weight_bytes:
        size += f" = {result.size_ratio:.2f}x the float32 weights ({result.float32_weight_bytes:,} bytes)"
    rows.append(("model.tflite", size))
    for spec in manifest.inputs + manifest.outputs:
        kind = "input" if spec in manifest.inputs else "output"
        quant = (
            f", scale {spec.quantization.scale:.4g} zero point {spec.quantization.zero_point}"
            if spec.quantization
            else ""
        )
        rows.append((kind, f"{spec.name} {spec.shape} {spec.dtype}{quant}"))
    lines = [f"{label:<16}{value}" for label, value in rows]
    validation = manifest.validation
    if validation is not None:
        lines.append("")
        lines.append(f"validation on {validation.samples} evaluation samples in {validation.runtime}")
        lines.append(f"  {'metric':<16}{'source':>10}{'converted':>12}{'change':>10}")
        for key, label in _METRIC_NAMES.items():
            if key in validation.metrics:
                source, converted = validation.metrics[f"{key}_source"], validation.metrics[key]
                lines.append(f"  {label:<16}{source:>10.4f}{converted:>12.4f}{converted - source:>+10.4f}")
        if validation.top1_agreement is not None:
            lines.append(f"  {'top-1 agreement':<16}{validation.top1_agreement:>22.2%}")
        lines.append(f"  {'max abs error':<16}{validation.max_abs_error:>22.6f}")
        lines.append(f"  {'mean abs error':<16}{validation.mean_abs_error:>22.6f}")
    lines.append("")
    lines.append(f"  {'runtime':<16}{'version':<10}{'loads':<7}{'p50 latency':>14}")
    for name, check in manifest.runtimes.items():
        latency = f"{check.latency_ms_p50:.3f} ms" if check.latency_ms_p50 is not None else "-"
        lines.append(
            f"  {name:<16}{check.version or '?':<10}{'yes' if check.loads else 'no':<7}{latency:>14}"
        )
        if check.error:
            lines.append(f"    {check.error}")
    lines.append("")
    lines.append(f"smoke samples   {manifest.smoke.samples}, atol {manifest.smoke.atol:.3g}")
    timing = ", ".join(f"{step} {seconds:.1f} s" for step, seconds in result.seconds.items())
    lines.append(f"time            {timing}")
    for note in result.notes:
        lines.append(f"note: {note}")
    for warning in result.warnings:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
