"""The smoke test: the staged model, in a fresh interpreter, reproduces the converter's outputs.

Light on purpose (numpy, the runtime, the store): the serving process runs it at activation.
The samples run through ``ActiveModel.check_samples``, i.e. ``runtime.run_samples``: the same
batching, quantization and dequantization that will serve requests, every output compared.
"""

from __future__ import annotations

from agent.errors import SmokeTestError, StoreError, VerifyError
from agent.serving import ActiveModel
from agent.store import ModelStore
from protocol.bundle import SAMPLES
from protocol.errors import BundleError
from protocol.samples import read_samples
from runtime import ModelLoadError, RuntimeChoice, RuntimeError_

__all__ = ["smoke"]


def smoke(store: ModelStore, sha256: str, runtime: RuntimeChoice, threads: int) -> ActiveModel:
    """Load the staged model in a fresh interpreter and reproduce the converter's outputs."""
    try:
        stored = store.read(sha256)
        model = ActiveModel.load(stored, runtime=runtime, threads=threads)
        samples = read_samples((stored.path / SAMPLES).read_bytes())
    except (StoreError, ModelLoadError, RuntimeError_, VerifyError, BundleError, OSError) as exc:
        raise SmokeTestError(f"smoke test could not run: {exc}") from exc
    try:
        mismatch = model.check_samples(samples, stored.manifest.smoke.atol)
    except RuntimeError_ as exc:  # samples that do not fit the model, or the runtime failed
        raise SmokeTestError(f"smoke test failed: the model cannot run its samples: {exc}") from exc
    if mismatch is not None:
        raise SmokeTestError(
            f"smoke test failed: {mismatch}, against the outputs recorded at conversion "
            f"({samples.count} samples)"
        )
    return model
