"""Worked example: a small PyTorch forecaster of next year's sunspot number, converted from a factory.

    python examples/torch_forecaster.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Needs the converter's PyTorch extra (`pip install 'edgefleet[converter-torch]'` and
`pip install --no-deps tf-keras==2.21.0`). Writes the sunspot windows (calibration and evaluation
data) into OUT_DIR/model, then runs ``edgefleet convert torch:converter.examples_torch:forecaster``,
by default with ``--mode auto``, into OUT_DIR/sunspots-torch-MODE.bundle with the report printed and
written beside it. The factory trains the module (seconds) and returns it with an example input;
the code is ``converter.examples_torch``.
"""

import sys
from pathlib import Path

from converter.examples import convert_trained
from converter.examples_torch import write_data

FACTORY = "torch:converter.examples_torch:forecaster"


def convert_argv(example: str, folder: Path, key: Path, out: Path, mode: str, *extra: str) -> list[str]:
    return [
        "convert", FACTORY,
        "--calibration", str(folder / "calibration.npz"), "--evaluation", str(folder / "evaluation.npz"),
        "--task", "forecast", "--mode", mode, "--name", example, "--version", "1.0.0",
        "--key", str(key), "--out", str(out), *extra,
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(convert_trained("sunspots-torch", None, "evaluation.npz", write_data, convert_argv))
