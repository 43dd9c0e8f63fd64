"""The smoke test: the staged model, in a fresh interpreter, reproduces the converter's outputs.

Light on purpose (numpy, the runtime, the store): the serving process runs it at activation.
"""

from __future__ import annotations

import io

import numpy as np

from agent.errors import SmokeTestError, StoreError, VerifyError
from agent.runtime import ModelLoadError, RuntimeChoice, RuntimeError_
from agent.serving import ActiveModel
from agent.store import ModelStore
from protocol.bundle import SAMPLES

__all__ = ["smoke"]


def smoke(store: ModelStore, sha256: str, runtime: RuntimeChoice, threads: int) -> ActiveModel:
    """Load the staged model in a fresh interpreter and reproduce the converter's outputs."""
    try:
        stored = store.read(sha256)
        model = ActiveModel.load(stored, runtime=runtime, threads=threads)
        with np.load(io.BytesIO((stored.path / SAMPLES).read_bytes())) as samples:
            x, y = samples["x"], samples["y"]
    except (StoreError, ModelLoadError, RuntimeError_, VerifyError, OSError, KeyError, ValueError) as exc:
        raise SmokeTestError(f"smoke test could not run: {exc}") from exc
    if len(x) == 0:
        raise SmokeTestError("smoke test failed: samples.npz holds no samples")
    outputs = model.predict(np.asarray(x, dtype=np.float32)).outputs
    expected = np.asarray(y, dtype=np.float32)
    if outputs.shape != expected.shape:
        raise SmokeTestError(
            f"smoke test failed: the model's outputs have shape {list(outputs.shape)}, "
            f"the recorded outputs {list(expected.shape)}"
        )
    diff = np.abs(outputs - expected)
    atol = stored.manifest.smoke.atol
    worst = float(diff.max())
    if not np.isfinite(worst) or worst > atol:
        sample = int(np.unravel_index(int(np.argmax(diff)), diff.shape)[0])
        raise SmokeTestError(
            f"smoke test failed: outputs differ from the recorded ones by up to {worst:.4g} "
            f"(allowed {atol:g}), worst at sample {sample} of {len(x)}"
        )
    return model
