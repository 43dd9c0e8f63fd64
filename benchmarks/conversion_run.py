"""One benchmark row: convert with ``--mode auto`` and print the candidates table (the Keras and the
foreign-model converter benchmarks share it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from converter.errors import ConverterError
from converter.gates import parse_gates
from converter.pipeline import ConversionRequest, ConversionResult, convert
from converter.report import candidates_table


def convert_and_show(
    name: str, request: ConversionRequest, progress: Any, headline: Callable[[str, ConversionResult], str]
) -> ConversionResult | str:
    """The result, printed under ``headline(name, result)``; or the error text when the conversion failed."""
    try:
        result = convert(request, progress=progress)
    except ConverterError as exc:
        return f"{name}: {exc}"
    task = request.task
    chosen = next(c for c in result.candidates if c.mode is result.manifest.quantization)
    conversion = result.manifest.conversion
    assert conversion is not None
    gates = parse_gates([f"{k}={v}" for k, v in conversion.max_drop.items()], task)
    print(f"\n{headline(name, result)}")
    print(candidates_table(task, result.candidates, result.float32_model_bytes, gates, chosen))
    return result
