"""The TFLite runtimes (tflite-runtime, LiteRT) behind one interface, shared by every part.

The converter's validation, ``edgefleet bundle``, the agent's smoke test and its serving path
all load models, preprocess raw values and run samples here, so a bundle is checked exactly as
a device will run it.
Imports only numpy and ``protocol``: never TensorFlow, never the agent or the converter.
"""

from runtime.describe import dynamic_batch, model_specs, tensor_spec
from runtime.loader import (
    AUTO_PREFERENCE,
    InputMismatchError,
    InvokeError,
    LoadedModel,
    ModelLoadError,
    ResizeError,
    RuntimeChoice,
    RuntimeError_,
    RuntimeInfo,
    RuntimeName,
    TensorDetail,
    installed_runtimes,
    load_model,
    resolve_runtime,
)
from runtime.preprocess import InputTransform, preprocess
from runtime.samples import compare_outputs, prepare_input, run_samples

__all__ = [
    "AUTO_PREFERENCE",
    "InputMismatchError",
    "InputTransform",
    "InvokeError",
    "LoadedModel",
    "ModelLoadError",
    "ResizeError",
    "RuntimeChoice",
    "RuntimeError_",
    "RuntimeInfo",
    "RuntimeName",
    "TensorDetail",
    "compare_outputs",
    "dynamic_batch",
    "installed_runtimes",
    "load_model",
    "model_specs",
    "prepare_input",
    "preprocess",
    "resolve_runtime",
    "run_samples",
    "tensor_spec",
]
