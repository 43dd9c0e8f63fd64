"""The models the whole-chain tests deploy, packed by the converter's own commands as a user runs
them: ``edgefleet bundle`` for ready-made TFLite models shaped like published ones
(``tests.support.published_models``), ``edgefleet convert`` for a Keras GRU forecaster."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgefleet.stack import run_edgefleet
from protocol.bundle import MODEL, read_bundle
from runtime import load_model, model_specs
from tests.support.converter import FACTORIES, write_sequences
from tests.support.published_models import raw_inputs


@dataclass(frozen=True)
class ChainModel:
    """A signed bundle and the ``edgefleet`` command that wrote it."""

    bundle: Path
    command: str
    """``bundle`` or ``convert``."""

    @property
    def tflite(self) -> bytes:
        """The model inside the bundle: what the agent serves and the reference runs."""
        return read_bundle(self.bundle).members[MODEL]


BUNDLED = {
    # published_models name: (task, primary output, evaluation data): the fixed-batch int8
    # detector, the five-output pose model with its 2-D mask, the batch-1 GRU forecaster, and an
    # image plus a feature vector with evaluation data (x_0, x_1 and y) and labels.
    "detector": ("regression", "output_1", False),
    "pose": ("regression", "output_4", False),
    "gru_forecaster": ("forecast", None, False),
    "two_inputs": ("classification", None, True),
}
TWO_INPUT_LABELS = ["cat", "dog", "bird", "fish"]


def _two_input_evaluation(model: Path, out: Path) -> Path:
    """``x_0``, ``x_1`` (in the order the runtime lists the model's inputs, as ``bundle`` reads
    them) and ``y``, class labels of the model's 4 classes."""
    inputs, _ = model_specs(load_model(model.read_bytes(), runtime="tflite-runtime"))
    arrays = raw_inputs(inputs, 40, seed=5)
    y = np.random.default_rng(5).integers(0, len(TWO_INPUT_LABELS), 40)
    np.savez(out, **{f"x_{i}": a for i, a in enumerate(arrays)}, y=y)
    return out


def bundle_published(folder: Path, name: str, key: Path, out: Path) -> ChainModel:
    """``edgefleet bundle`` of ``folder/<name>.tflite`` as ``BUNDLED[name]`` describes it."""
    task, primary, evaluated = BUNDLED[name]
    bundle = out / f"{name}.bundle"
    model = folder / f"{name}.tflite"
    args = ["bundle", str(model), "--name", name.replace("_", "-"), "--version", "1.0.0"]
    args += ["--task", task, "--key", str(key), "--out", str(bundle)]
    if primary:
        args += ["--primary-output", primary]
    if evaluated:
        labels = out / f"{name}-labels.txt"
        labels.write_text("".join(f"{label}\n" for label in TWO_INPUT_LABELS))
        evaluation = _two_input_evaluation(model, out / f"{name}-evaluation.npz")
        args += ["--evaluation", str(evaluation), "--labels", str(labels)]
    run_edgefleet(args)
    return ChainModel(bundle, "bundle")


def convert_gru(key: Path, out: Path) -> ChainModel:
    """The GRU forecaster of the converter's tests (batch fixed at 1, unrolled), converted from
    its Keras source with ``--mode auto``: the path a user takes and the bundle agents once
    refused."""
    calibration, evaluation = write_sequences(out, (12, 1))
    bundle = out / "gru-convert.bundle"
    args = [
        "convert", f"{FACTORIES}:gru_forecaster",
        "--calibration", str(calibration), "--evaluation", str(evaluation),
        "--mode", "auto", "--name", "gru-convert", "--version", "1.0.0", "--task", "forecast",
        "--key", str(key), "--out", str(bundle),
    ]  # fmt: skip
    run_edgefleet(args)
    return ChainModel(bundle, "convert")
