"""The manifest's tensor contract: batch dimensions, the primary output, per-input preprocessing,
and manifests written before them still parse."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from protocol.bundle import parse_manifest
from protocol.errors import BundleError
from protocol.manifest import Manifest, Preprocessing, TensorSpec

FILES = {
    "model.tflite": {"sha256": "0" * 64, "size": 1},
    "samples.npz": {"sha256": "1" * 64, "size": 1},
}


def _manifest(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "detector",
        "version": "1.0.0",
        "task": "regression",
        "created_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        "files": FILES,
        "inputs": [{"name": "image", "shape": [1, 32, 32, 3], "dtype": "float32"}],
        "outputs": [
            {"name": "boxes", "shape": [1, 10, 4], "dtype": "float32"},
            {"name": "scores", "shape": [1, 10], "dtype": "float32"},
        ],
        "quantization": "none",
        "tools": {"edgefleet": "test"},
        "smoke": {"samples": 1, "atol": 0.01},
    }
    data.update(changes)
    return data


def test_fixed_and_dynamic_batches() -> None:
    fixed = TensorSpec(name="image", shape=[1, 32, 32, 3], dtype="int8")
    dynamic = TensorSpec(name="image", shape=[-1, 32, 32, 3], dtype="float32")
    unbatched = TensorSpec(name="table", shape=[10, 4], dtype="float32", batch_dim=None)
    assert (fixed.fixed_batch, dynamic.fixed_batch, unbatched.fixed_batch) == (1, None, None)
    assert fixed.instance_shape == [32, 32, 3] and unbatched.instance_shape == [10, 4]
    with pytest.raises(ValidationError, match="batch_dim 4 is not an axis"):
        TensorSpec(name="image", shape=[1, 32, 32, 3], dtype="int8", batch_dim=4)
    with pytest.raises(ValidationError, match="size below -1"):
        TensorSpec(name="image", shape=[1, -2], dtype="int8")


def test_primary_output_must_name_an_output() -> None:
    manifest = Manifest.model_validate(_manifest(primary_output="scores"))
    assert manifest.primary_output_index == 1
    assert Manifest.model_validate(_manifest()).primary_output_index == 0
    with pytest.raises(ValidationError, match="primary_output 'labels' is not one of the outputs"):
        Manifest.model_validate(_manifest(primary_output="labels"))


def test_an_old_manifest_with_one_preprocessing_object_still_parses() -> None:
    old = _manifest(preprocessing={"scale": 0.5, "offset": 1.0, "description": "pixels / 2 after -1"})
    manifest = parse_manifest(json.dumps(old).encode())
    assert manifest.preprocessing == {
        "image": Preprocessing(method="scale", scale=0.5, offset=1.0, description="pixels / 2 after -1")
    }
    identity = parse_manifest(json.dumps(_manifest(preprocessing={"scale": 1.0, "offset": 0.0})).encode())
    assert identity.preprocessing == {}
    # ... and an old manifest without the newer fields gets their defaults
    assert identity.primary_output is None and identity.inputs[0].batch_dim == 0


def test_per_input_preprocessing_is_checked_against_the_inputs() -> None:
    pre = {"image": {"method": "standardize", "offset": [0.5, 0.4, 0.3], "scale": [4.0, 4.0, 4.0]}}
    manifest = Manifest.model_validate(_manifest(preprocessing=pre))
    assert manifest.preprocessing["image"].applies
    refused = {
        "names an input the model lacks": (
            {"pixels": {"method": "scale", "scale": 2.0}},
            "not one of the inputs",
        ),
        "wrong channel count": ({"image": {"method": "scale", "scale": [1.0, 2.0]}}, "2 scale values"),
        "zero scale": ({"image": {"method": "scale", "scale": 0.0}}, "must not be 0"),
        "none with a scale": ({"image": {"method": "none", "scale": 2.0}}, "takes no scale"),
        "unknown method": ({"image": {"method": "whiten"}}, "method"),
    }
    for case, (value, words) in refused.items():
        with pytest.raises(BundleError, match=words):
            parse_manifest(json.dumps(_manifest(preprocessing=value)).encode())
        assert case  # (the key documents the case)
    in_model = Preprocessing(method="in_model", description="a Normalization layer")
    assert not in_model.applies


def test_the_serialized_manifest_round_trips() -> None:
    manifest = Manifest.model_validate(
        _manifest(
            primary_output="scores",
            preprocessing={
                "image": {"method": "minmax", "offset": 0.0, "scale": 1 / 255, "channel_order": "bgr"}
            },
        )
    )
    again = parse_manifest(manifest.model_dump_json().encode())
    assert again == manifest
    assert again.preprocessing["image"].channel_order == "bgr"
