"""Worked example: a small PyTorch forecaster of next year's sunspot number, converted from a factory.

    python examples/torch_forecaster.py [OUT_DIR] [--mode MODE] [--max-drop M=X]

Needs the converter's PyTorch extra (`pip install 'edgefleet[converter-torch]'` and
`pip install --no-deps tf-keras==2.21.0`). Writes the sunspot windows (calibration and evaluation
data) into OUT_DIR, then runs ``edgefleet convert torch:converter.examples_torch:forecaster``, by
default with ``--mode auto``, into OUT_DIR/sunspots-torch-MODE.bundle with the report printed and
written beside it. The factory trains the module (seconds) and returns it with an example input;
the code is ``converter.examples_torch``.
"""

import argparse
import sys
from pathlib import Path

from converter.cli import main as converter_main
from converter.examples_torch import write_data


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("sunspots-torch-example"))
    parser.add_argument("--mode", default="auto", help="quantization mode (default auto: every mode)")
    parser.add_argument("--key", type=Path, help="operator key (default: a new one in OUT_DIR/keys)")
    parser.add_argument("--max-drop", action="append", default=[], metavar="METRIC=AMOUNT")
    args = parser.parse_args(argv)
    write_data(args.out_dir)
    key = args.key or args.out_dir / "keys" / "operator.key"
    if not key.is_file():
        converter_main(["keys", "generate", "--out", str(key.parent)])
    out = args.out_dir / f"sunspots-torch-{args.mode}.bundle"
    return converter_main(
        [
            "convert", "torch:converter.examples_torch:forecaster",
            "--calibration", str(args.out_dir / "calibration.npz"),
            "--evaluation", str(args.out_dir / "evaluation.npz"),
            "--task", "forecast", "--mode", args.mode,
            "--name", "sunspots-torch", "--version", "1.0.0",
            "--key", str(key), "--out", str(out), "--force",
            "--report-json", str(out.with_suffix(".json")),
            *[f"--max-drop={budget}" for budget in args.max_drop],
        ]
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
