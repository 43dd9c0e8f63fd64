"""``edgefleet keys generate`` and ``edgefleet convert``: argument parsing only.

Handlers import their modules when they run, so building the ``edgefleet`` parser stays cheap
and never imports numpy or TensorFlow.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from converter.extras import install_command

MODES = ("auto", "int8", "float16", "dynamic", "none", "int16x8")
IO_TYPES = ("int8", "uint8", "float")
TASKS = ("classification", "regression", "forecast")
RUNTIMES = ("tflite-runtime", "litert", "any")
PREPROCESSING = ("none", "standardize", "minmax", "scale")


MODEL_KINDS_EPILOG = f"""accepted models:
  model.keras, model.h5         Keras 3 archive, legacy Keras HDF5
  DIR/ (saved_model.pb)         TensorFlow SavedModel, serving_default with one input
  pkg.module:fn, file.py:fn     a function with no arguments returning a Keras model
  model.onnx                    ONNX (standard and ONNX-ML ops), validated against onnxruntime;
                                needs: {install_command("converter-onnx")}
  model.joblib, model.pkl       scikit-learn estimator or Pipeline (linear and logistic models,
                                MLPs, random forests, gradient boosting, scalers, one-hot),
                                exported with skl2onnx and validated against its own predict_proba /
                                predict; needs: {install_command("converter-sklearn")}
                                WARNING: loading a pickle or joblib file runs code from it. It is
                                loaded in the conversion's subprocess, and only the file named
                                here: convert only files you trust.
  torch:pkg.module:fn,          PyTorch: a function with no arguments returning (nn.Module, example
  torch:file.py:fn              input tensor); exported to ONNX with torch.onnx.export in its own
                                subprocess, validated against the module's own outputs;
                                needs: {install_command("converter-torch")}
  (a .pt/.pth checkpoint is not read: export the module to ONNX with torch.onnx.export, or give
  the factory above)
"""


def register(commands: Any) -> None:
    """Add the converter's subcommands to the ``edgefleet`` subparsers object."""
    keys = commands.add_parser("keys", help="manage operator signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    generate = key_commands.add_parser("generate", help="write a new Ed25519 key pair (NAME.key, NAME.pub)")
    generate.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory for the key files"
    )
    generate.add_argument("--name", default="operator", help="file name stem (default: operator)")
    generate.add_argument("--force", action="store_true", help="replace an existing key pair")
    generate.set_defaults(handler=_keys_generate)

    convert = commands.add_parser(
        "convert",
        help="convert a model to a validated, signed TFLite bundle",
        description="Convert a Keras, ONNX or scikit-learn model to quantized TFLite, validate it against "
        "the source model in the agent's runtimes, record baseline statistics and smoke samples, and write "
        "a signed bundle.",
        epilog=MODEL_KINDS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    convert.add_argument(
        "model",
        type=Path,
        help="the source model: .keras, .h5, a SavedModel directory, module:function / file.py:function "
        "(Keras), .onnx, a scikit-learn .joblib/.pkl, or torch:module:function (see below; loading a "
        "pickle runs its code)",
    )
    convert.add_argument(
        "--calibration",
        type=Path,
        required=True,
        metavar="CAL",
        help="representative inputs for calibration: .npz (x), .npy, .csv, or a folder of images "
        "(see --image-preprocessing)",
    )
    convert.add_argument(
        "--evaluation",
        type=Path,
        required=True,
        metavar="EVAL",
        help="inputs x and labels/targets y: .npz (x, y) or .csv (last column y)",
    )
    convert.add_argument(
        "--mode",
        choices=MODES,
        required=True,
        help="quantization mode; auto converts and measures every mode and picks the smallest, then "
        "fastest, inside the --max-drop budget; int16x8 is experimental",
    )
    convert.add_argument(
        "--io-type",
        choices=IO_TYPES,
        default="int8",
        help="input/output tensor type of an int8 model (default int8)",
    )
    convert.add_argument(
        "--max-drop",
        action="append",
        default=[],
        metavar="METRIC=AMOUNT",
        help="accuracy budget, e.g. accuracy=0.01 (absolute) or mae=2%% (relative); fails the "
        "conversion (exit 2, with the table) when exceeded; repeatable. auto defaults to "
        "accuracy=0.01 / mae=2%% (regression) / mae=3%% (forecast)",
    )
    convert.add_argument(
        "--rnn",
        choices=("unroll", "keep"),
        default="unroll",
        help="LSTM/GRU layers: unroll for the fixed sequence length (default; TF 2.21 crashes "
        "calibrating Keras 3 RNN loops) or keep them as a loop",
    )
    convert.add_argument(
        "--sklearn-scaler",
        choices=("preprocessing", "graph"),
        default="preprocessing",
        help="a scikit-learn Pipeline that starts with StandardScaler/MinMaxScaler/MaxAbsScaler: record "
        "it as the bundle's preprocessing (default; devices scale raw values in float32, int8 inputs "
        "then hold scaled features) or keep it in the graph",
    )
    convert.add_argument(
        "--image-preprocessing",
        choices=("scale01", "minus1to1", "raw"),
        help="a --calibration folder of images: pixels 0..255 become x/255 (scale01, the default), "
        "x/127.5-1 (minus1to1) or x (raw); images are resized to the model's input. This only reads "
        "the folder and is not recorded (callers then send model inputs); to record what the model "
        "was trained with, use --preprocess-scale or --preprocessing-file instead, which read the "
        "pixels raw and map them",
    )
    _preprocessing_options(convert, "the --calibration and --evaluation data")
    convert.add_argument(
        "--float-layers",
        default="",
        metavar="NAME[,NAME]",
        help="int8: keep these layers in float (TensorFlow's quantization debugger)",
    )
    convert.add_argument("--name", required=True, help="model name (lower case, digits, _ . -)")
    convert.add_argument("--version", required=True, help="semantic version, e.g. 1.0.0")
    convert.add_argument("--task", choices=TASKS, required=True)
    convert.add_argument("--labels", type=Path, metavar="labels.txt", help="class names, one per line")
    convert.add_argument("--description", default="", help="free text stored in the manifest")
    convert.add_argument(
        "--key", type=Path, required=True, metavar="PRIVATE.key", help="operator signing key"
    )
    convert.add_argument("--out", type=Path, required=True, metavar="OUT.bundle", help="the bundle to write")
    convert.add_argument("--force", action="store_true", help="replace an existing --out")
    convert.add_argument("--no-input-stats", dest="input_stats", action="store_false", help=NO_INPUT_STATS)
    convert.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="tflite-runtime",
        help="runtime the model must load in (default tflite-runtime; any: at least one)",
    )
    convert.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="time limit for the conversion and for each runtime check (default 300)",
    )
    convert.add_argument("--report-json", type=Path, metavar="PATH", help="also write the report as JSON")
    convert.add_argument(
        "--smoke-samples",
        type=int,
        default=8,
        metavar="N",
        help="evaluation samples recorded for the device's smoke test (default 8)",
    )
    convert.set_defaults(handler=_convert)

    _register_bundle(commands)


def _register_bundle(commands: Any) -> None:
    bundle = commands.add_parser(
        "bundle",
        help="package a ready-made .tflite model as a validated, signed bundle",
        description="Package a TFLite model made elsewhere: read its signature, run it in the agent's "
        "runtimes, compare with the targets and record baseline statistics when --evaluation is given, "
        "record smoke samples, and sign.",
    )
    bundle.add_argument("model", type=Path, help="the .tflite model")
    bundle.add_argument(
        "--evaluation", type=Path, metavar="EVAL", help="inputs x and targets y (.npz or .csv)"
    )
    bundle.add_argument(
        "--mode",
        choices=MODES[1:],
        help="how the model was quantized (default: int8 for int8/uint8 inputs, else none)",
    )
    bundle.add_argument("--name", required=True, help="model name (lower case, digits, _ . -)")
    bundle.add_argument("--version", required=True, help="semantic version, e.g. 1.0.0")
    bundle.add_argument("--task", choices=TASKS, required=True)
    bundle.add_argument("--labels", type=Path, metavar="labels.txt", help="class names, one per line")
    bundle.add_argument("--description", default="", help="free text stored in the manifest")
    bundle.add_argument("--key", type=Path, required=True, metavar="PRIVATE.key", help="operator signing key")
    bundle.add_argument("--out", type=Path, required=True, metavar="OUT.bundle", help="the bundle to write")
    bundle.add_argument("--force", action="store_true", help="replace an existing --out")
    bundle.add_argument("--no-input-stats", dest="input_stats", action="store_false", help=NO_INPUT_STATS)
    bundle.add_argument("--runtime", choices=RUNTIMES, default="tflite-runtime")
    bundle.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    bundle.add_argument("--report-json", type=Path, metavar="PATH", help="also write the report as JSON")
    bundle.add_argument(
        "--smoke-samples",
        type=int,
        default=8,
        metavar="N",
        help="samples recorded for the device's smoke test (default 8; fewer when the tensors are large)",
    )
    bundle.add_argument(
        "--primary-output",
        metavar="NAME",
        help="a model with several outputs: the one metrics, baseline, labels and health checks use "
        "(default: the first); every output is described and smoke-tested",
    )
    _preprocessing_options(bundle, "the --evaluation data")
    bundle.set_defaults(handler=_bundle)


def _preprocessing_options(command: Any, data: str) -> None:
    group = command.add_argument_group(
        "preprocessing",
        "What the model was trained with, recorded in the manifest per input: the agent applies it to "
        "the raw values callers send (channel order first, then (x - offset) * scale; V,V,...: one "
        "value, or one per feature/channel of the last axis). The flags describe a single-input "
        "model; --preprocessing-file describes any. With any of these, " + data + " are raw values "
        "too: they go through the recorded preprocessing exactly as the agent will before the model "
        "is run and validated. Without them nothing is recorded and the data are model inputs, "
        "unless the model carries a Keras Normalization/Rescaling layer (recorded as in_model). "
        "Resizing is the caller's job: the agent refuses another spatial size.",
    )
    group.add_argument(
        "--preprocessing",
        choices=PREPROCESSING,
        help="none: raw values go in; standardize (x - mean) / std or minmax (x - min) / (max - min) "
        "with --preprocess-mean/-std or --preprocess-min/-max, or else computed per last-axis feature "
        "from the calibration data (convert); scale: --preprocess-scale and --preprocess-offset",
    )
    group.add_argument("--preprocess-mean", type=_floats, metavar="V[,V]", help="standardize: the mean(s)")
    group.add_argument("--preprocess-std", type=_floats, metavar="V[,V]", help="standardize: the std(s)")
    group.add_argument("--preprocess-min", type=_floats, metavar="V[,V]", help="minmax: the minimum(s)")
    group.add_argument("--preprocess-max", type=_floats, metavar="V[,V]", help="minmax: the maximum(s)")
    group.add_argument("--preprocess-scale", type=_floats, metavar="V[,V]", help="scale: multiply by")
    group.add_argument(
        "--preprocess-offset", type=_floats, metavar="V[,V]", help="scale: subtract first (default 0)"
    )
    group.add_argument(
        "--preprocessing-file",
        type=Path,
        metavar="JSON",
        help='one entry, e.g. {"method": "scale", "scale": 0.00392}, or one per input name, e.g. '
        '{"image": {"scale": 0.00392, "channel_order": "bgr"}, "vector": {"mean": [..], "std": [..]}}; '
        "keys: method, mean, std, min, max, scale, offset, channel_order, caller_channel_order, "
        "description",
    )
    group.add_argument(
        "--channel-order",
        choices=("rgb", "bgr"),
        help="image models: the channel order trained on; callers send RGB and the agent reverses "
        "the channels of a bgr model",
    )


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"{text!r} holds a value that is not a finite number")
    return values


def _keys_generate(args: argparse.Namespace) -> int:
    from converter.keys import generate_key_pair

    pair = generate_key_pair(args.out, name=args.name, force=args.force)
    print(f"private key {pair.private_path} (keep it secret; mode 0600)")
    print(f"public key  {pair.public_path} (give it to the fleet and the devices)")
    print(pair.key_id)
    return 0


NO_INPUT_STATS = (
    "leave the inputs' feature statistics out of the baseline: a bundle for agents that predate "
    "input drift tests (they refuse a manifest that carries them)"
)

# Options `convert` and `bundle` share, by their argparse destination.
_SHARED_FIELDS = (
    "model", "evaluation", "mode", "name", "version", "task", "labels", "description",
    "key", "out", "force", "runtime", "timeout", "smoke_samples", "preprocessing", "preprocess_mean",
    "preprocess_std", "preprocess_min", "preprocess_max", "preprocess_scale", "preprocess_offset",
    "preprocessing_file", "channel_order", "input_stats",
)  # fmt: skip


def _shared_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {field: getattr(args, field) for field in _SHARED_FIELDS}


def _print_report(result: Any, report_json: Path | None) -> None:
    from converter.report import report_table, write_report_json

    print(report_table(result))
    if report_json is not None:
        write_report_json(result, report_json)


def _convert(args: argparse.Namespace) -> int:
    from converter.errors import AccuracyGateError
    from converter.pipeline import ConversionRequest, convert

    request = ConversionRequest.build(
        **_shared_fields(args),
        calibration=args.calibration,
        io_type=args.io_type,
        max_drop=args.max_drop,
        rnn=args.rnn,
        sklearn_scaler=args.sklearn_scaler,
        float_layers=[name.strip() for name in args.float_layers.split(",") if name.strip()],
        image_preprocessing=args.image_preprocessing,
    )
    try:
        result = convert(request, progress=_progress)
    except AccuracyGateError as exc:
        print(exc.report, flush=True)
        raise
    _print_report(result, args.report_json)
    return 0


def _bundle(args: argparse.Namespace) -> int:
    from converter.tflite_bundle import BundleRequest, bundle_tflite

    request = BundleRequest.build(**_shared_fields(args), primary_output=args.primary_output)
    _print_report(bundle_tflite(request, progress=_progress), args.report_json)
    return 0


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The converter's commands alone (``python -m converter``), with the ``edgefleet`` error contract."""
    from protocol.errors import EdgefleetError

    parser = argparse.ArgumentParser(prog="python -m converter")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(commands)
    args = parser.parse_args(argv)
    try:
        result: int = args.handler(args)
    except EdgefleetError as exc:
        print(f"edgefleet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return result
