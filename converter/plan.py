"""Phase "inspect": everything that can be checked before any data is read or TensorFlow starts.

The output path is free, the signing key loads, the budget parses for the task, the options fit
the mode, and the source model is a kind the converter reads (with its declared input shapes).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from converter.errors import InputError
from converter.gates import DEFAULT_AUTO_BUDGET, Gate, parse_gates
from converter.pack import check_output_free
from converter.request import ConversionRequest
from converter.source import SourceModel, inspect_source
from protocol.manifest import QuantizationMode
from protocol.signing import load_private_key

AUTO_MODES = (
    QuantizationMode.NONE,
    QuantizationMode.FLOAT16,
    QuantizationMode.DYNAMIC,
    QuantizationMode.INT8,
    QuantizationMode.INT16X8,
)
EXPERIMENTAL_MODES = frozenset({QuantizationMode.INT16X8})
"""Measured by ``--mode auto`` but never picked by it: ask for them by name."""
CALIBRATED_MODES = frozenset({QuantizationMode.INT8, QuantizationMode.INT16X8})
"""The modes whose activation ranges come from the calibration data."""


@dataclass(frozen=True)
class Plan:
    source: SourceModel
    modes: list[QuantizationMode]
    """The modes to convert and measure (one, or every mode for auto)."""
    gates: list[Gate]
    signing_key: Ed25519PrivateKey

    @property
    def calibrated(self) -> bool:
        """Whether any asked mode is calibrated (only then do calibration ranges matter)."""
        return any(mode in CALIBRATED_MODES for mode in self.modes)


def inspect_request(request: ConversionRequest) -> Plan:
    """Check the request against the file system and itself; raise ``InputError`` on the first problem."""
    auto = request.mode == "auto"
    check_output_free(request.out, request.force)
    signing_key = load_private_key(request.key)
    gates = parse_gates(
        request.max_drop or ([DEFAULT_AUTO_BUDGET[request.task]] if auto else []), request.task
    )
    if request.float_layers and request.mode not in ("auto", QuantizationMode.INT8):
        raise InputError("--float-layers applies to --mode int8 (or auto) only")
    modes = list(AUTO_MODES) if request.mode == "auto" else [QuantizationMode(request.mode)]
    return Plan(inspect_source(request.model), modes, gates, signing_key)
