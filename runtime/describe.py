"""A loaded model's tensors as the manifest describes them (``protocol.manifest.TensorSpec``).

The shape comes from the model's ``shape_signature``: -1 where the model lets a dimension be
resized (a dynamic batch, a variable sequence length), the allocated size everywhere else. So a
detector exported at batch 1 is described with a fixed batch of 1, never as resizable.
"""

from __future__ import annotations

from typing import cast, get_args

from protocol.manifest import Quantization, TensorDType, TensorSpec
from runtime.loader import LoadedModel, ModelLoadError, TensorDetail


def tensor_spec(detail: TensorDetail, *, friendly_name: bool = True) -> TensorSpec:
    """The manifest's view of one runtime tensor. ``friendly_name``: the SignatureDef's name
    (``image``) when the model has one, else the graph name (``serving_default_image:0``)."""
    dtype = str(detail.dtype)
    if dtype not in get_args(TensorDType):
        raise ModelLoadError(f"tensor {detail.name} has dtype {dtype}, which edgefleet cannot describe")
    name = (detail.signature_name if friendly_name else None) or detail.name
    return TensorSpec(
        name=name,
        shape=list(detail.signature),
        dtype=cast(TensorDType, dtype),
        quantization=Quantization(scale=detail.scale, zero_point=detail.zero_point)
        if detail.quantized
        else None,
        batch_dim=0,
    )


def model_specs(
    model: LoadedModel, *, friendly_name: bool = True
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """(inputs, outputs) in the model's own order. Names that would repeat fall back to the
    graph names, which are unique."""
    inputs = [tensor_spec(d, friendly_name=friendly_name) for d in model.inputs]
    outputs = [tensor_spec(d, friendly_name=friendly_name) for d in model.outputs]
    if friendly_name and len({s.name for s in inputs}) + len({s.name for s in outputs}) != len(inputs) + len(
        outputs
    ):
        return model_specs(model, friendly_name=False)
    return inputs, outputs


def dynamic_batch(model: LoadedModel) -> bool:
    """Whether every input declares its batch (axis 0) resizable."""
    return all(d.signature[:1] == (-1,) for d in model.inputs)
