"""Which optional converter inputs are installed, checked without importing them.

ONNX and scikit-learn models go through packages the base ``converter`` extra does not carry
(onnx, onnxruntime, onnx2tf, skl2onnx): a model of such a kind without them is refused before
any data is read, with the exact install command.
"""

from __future__ import annotations

import importlib.util

from converter.errors import MissingExtraError

TF_KERAS_PIN = "tf-keras==2.21.0"
"""onnx2tf builds its graph with Keras 2 (tf_keras). tf-keras declares the full ``tensorflow``
distribution as a dependency, which would install a second TensorFlow over ``tensorflow-cpu``;
it is installed without dependencies instead (it runs on the TensorFlow already there)."""

ONNX_MODULES = ("onnx", "onnxruntime", "onnx2tf", "onnx_graphsurgeon", "sng4onnx", "tf_keras")
SKLEARN_MODULES = (*ONNX_MODULES, "skl2onnx", "joblib")
TORCH_MODULES = (*ONNX_MODULES, "torch", "onnxscript")


def install_command(extra: str) -> str:
    """The exact commands that install ``extra`` (converter-onnx, converter-sklearn, converter-torch)."""
    return f"pip install 'edgefleet[{extra}]' && pip install --no-deps {TF_KERAS_PIN}"


def require(extra: str, modules: tuple[str, ...], what: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtraError(
            f"{what} need the {extra} extra (missing: {', '.join(missing)}); install it with: "
            f"{install_command(extra)}"
        )
