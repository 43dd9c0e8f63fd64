"""The probation benchmark's slow model: real work, three times over (``benchmarks.probation``)."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import numpy.typing as npt

import agent.serving
from agent.serving import ActiveModel


def slowed(model: ActiveModel, helpers: list[ActiveModel]) -> ActiveModel:
    """``model`` doing ``1 + len(helpers)`` x its work per request: the timed span (``run_samples``)
    runs through each helper's interpreter (copies of the model) and then its own. Real work, so
    the slowdown is in CPU time as in wall time and meets the machine's load as the old model's
    does (a busy-wait of twice the span's wall time, the earlier stand-in, cost less CPU when
    preempted while spinning: a saturated machine read it as 2.2x)."""
    real = agent.serving.run_samples
    if getattr(real, "slowed_models", None) is None:

        def run_samples(loaded: Any, *args: Any, **kwargs: Any) -> list[npt.NDArray[np.float32]]:
            for helper in slowed_models.get(id(loaded), ()):
                real(helper, *args, **kwargs)
            return real(loaded, *args, **kwargs)

        slowed_models: dict[int, list[Any]] = {}
        run_samples.slowed_models = slowed_models  # type: ignore[attr-defined]
        agent.serving.run_samples = run_samples  # type: ignore[assignment]
    agent.serving.run_samples.slowed_models[id(model.loaded)] = [h.loaded for h in helpers]  # type: ignore[attr-defined]
    return model


def true_ratio(
    old: ActiveModel, slow: ActiveModel, x: npt.NDArray[Any], pairs: int = 1000
) -> tuple[float, float]:
    """The slow model's cost over the old one's in one thread (old, slow, old, ...): the medians
    of the per-pair ratios of invoke time and of CPU time."""
    wall, cpu = [], []
    for _ in range(pairs):
        a, b = old.predict(x), slow.predict(x)
        assert a.invoke_ms and b.invoke_ms and a.cpu_ms and b.cpu_ms
        wall.append(b.invoke_ms / a.invoke_ms)
        cpu.append(b.cpu_ms / a.cpu_ms)
    return statistics.median(wall), statistics.median(cpu)
