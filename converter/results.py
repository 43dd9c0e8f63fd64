"""What the phases hand on: one runtime's run of a model, a measured candidate, the final result.

Plain data, imported by the phases, ``edgefleet bundle`` and the report alike, so that none of
them needs another's module for its types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from converter.errors import ConverterError
from converter.request import RequestFacts
from protocol.manifest import Manifest, QuantizationMode, RuntimeCheck, TensorSpec, ValidationReport
from runtime import RuntimeInfo


@dataclass(frozen=True)
class RuntimeRun:
    """One installed runtime's run of one model (``converter.validate`` in a child process).

    Every list holds one array per model output (or input), dequantized float32, batch first.
    """

    info: RuntimeInfo
    check: RuntimeCheck
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    eval_outputs: list[npt.NDArray[np.float32]] | None
    """Every output on the evaluation set."""
    smoke_outputs: list[npt.NDArray[np.float32]] | None
    """Every output for the smoke inputs, run as the agent's smoke test runs them."""
    smoke_inputs: list[npt.NDArray[Any]] | None = None
    """The smoke inputs in the model's input dtypes: what ``samples.npz`` stores."""


@dataclass
class Candidate:
    """One converted mode, measured."""

    mode: QuantizationMode
    model: bytes | None
    ops: list[str]
    error: ConverterError | None = None
    runs: list[RuntimeRun] = field(default_factory=list)
    primary: RuntimeRun | None = None
    validation: ValidationReport | None = None
    gate_failures: list[str] = field(default_factory=list)
    primary_output: int = 0
    """The output the metrics, the baseline and the agent's health checks use."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.primary is not None and not self.gate_failures

    def primary_eval(self) -> npt.NDArray[np.float32]:
        """The primary output on the evaluation set, in the primary runtime (validated only)."""
        assert self.primary is not None and self.primary.eval_outputs is not None
        return self.primary.eval_outputs[self.primary_output]

    def latency(self, runtime: str) -> float | None:
        for run in self.runs:
            if run.info.name == runtime and run.check.loads:
                return run.check.latency_ms_p50
        return None


@dataclass(frozen=True)
class ConversionResult:
    request: RequestFacts
    manifest: Manifest
    key_id: str
    model_size: int
    bundle_size: int
    float32_weight_bytes: int | None
    """Bytes of the source model's weights as float32: the fallback reference for the size ratio."""
    seconds: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    """Things the operator should look at (few calibration samples, an accuracy drop)."""
    notes: list[str] = field(default_factory=list)
    """Facts worth knowing that need no action (e.g. a widened smoke tolerance)."""
    float32_model_bytes: int | None = None
    """Size of the float32 .tflite converted in the same run: the reference for the size ratio."""
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def size_ratio(self) -> float | None:
        reference = self.float32_model_bytes or self.float32_weight_bytes
        return self.model_size / reference if reference else None
