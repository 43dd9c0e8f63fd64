"""The converter's exception tree.

Every failure an operator can act on is a ``ConverterError`` (an ``EdgefleetError``), so the CLI
prints one line and exits 2. Third-party failures (TensorFlow, the TFLite runtimes, numpy file
parsing) are translated into these at one boundary each: ``data``/``source`` for inputs, the
worker launcher for conversion, the validator launcher for runtime checks.
"""

from __future__ import annotations

from protocol.errors import EdgefleetError


class ConverterError(EdgefleetError):
    """Base class: the converter could not produce a bundle."""


class InputError(ConverterError):
    """A model, data, labels, key or output path that cannot be used as given."""


class UnsupportedModelError(InputError):
    """A model file of a kind the converter does not read (yet)."""


class MissingExtraError(UnsupportedModelError):
    """A model kind whose converter packages are not installed; the message has the install command."""


class OutputExistsError(InputError):
    """The output file exists and ``--force`` was not given."""


class ConversionError(ConverterError):
    """TensorFlow failed, crashed or hung while converting; names the mode and the likely cause."""


class ModelValidationError(ConverterError):
    """The converted model does not load or run in the runtime the devices need."""


class UnsupportedOpsError(ConversionError):
    """The model needs TensorFlow ops (SELECT_TF_OPS / Flex) that the agent's runtimes cannot run."""


class AccuracyGateError(ConverterError):
    """The converted model is worse than ``--max-drop`` allows; ``report`` is the table to show."""

    def __init__(self, message: str, report: str = "") -> None:
        super().__init__(message)
        self.report = report
