"""The drift tests of a window (``agent.drift``) on feature statistics the converter's own code
records (``converter.baseline``), and through the real serving path and API."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import requests
from pydantic import ValidationError

from agent.drift import FeatureBatch, input_drift, output_drift
from agent.telemetry import RequestMetrics, encode_window, prediction_health
from converter.baseline import input_feature_stats
from protocol.errors import MessageError
from protocol.features import MAX_SUMMARY_FEATURES, padded_edges, summarize
from protocol.manifest import BaselineStats, FeatureStats
from protocol.messages import ResourceUsage, TelemetryWindow, parse_message
from tests.support.agent import Bundles

THRESHOLD = 5.0
"""The fleet's default ``input_drift`` alert rule (held equal below where the fleet is installed;
the aarch64 stage runs these tests from the device install, which has no fleet dependencies)."""


def test_the_threshold_here_is_the_fleets_default_rule() -> None:
    pytest.importorskip("sqlalchemy", reason="the fleet's storage layer is not installed here")
    from fleet.alerts import AlertRules

    assert AlertRules().input_drift == THRESHOLD


def _population(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    """Rows of 12 features: normal, skewed (heavy-tailed), discrete with many zeros, correlated."""
    base = rng.normal(size=(n, 4))
    skewed = rng.lognormal(sigma=1.2, size=(n, 3)) * 40
    discrete = np.where(rng.random((n, 3)) < 0.5, 0.0, rng.integers(1, 17, size=(n, 3)) / 16)
    correlated = base[:, :2] * 0.9 + rng.normal(scale=0.3, size=(n, 2))
    return np.hstack([base, skewed, discrete, correlated]).astype(np.float32)


def _batch(x: npt.NDArray[np.float32], stats: FeatureStats) -> FeatureBatch:
    """What ``ActiveModel.input_features`` hands the metrics for these rows."""
    summary = summarize(x, stats.values)
    assert summary is not None
    return FeatureBatch(summary, MEANS[id(stats)], EDGES[id(stats)])


MEANS: dict[int, npt.NDArray[np.float64]] = {}
EDGES: dict[int, npt.NDArray[np.float64]] = {}
"""Per statistics, the arrays a loaded model shares between requests (``ActiveModel``)."""


def _window(x: npt.NDArray[np.float32], baseline: BaselineStats) -> RequestMetrics:
    stats = baseline.input_features
    assert stats is not None
    MEANS.setdefault(id(stats), np.asarray(stats.mean))
    EDGES.setdefault(id(stats), padded_edges(stats.edges))
    metrics = RequestMetrics()
    for row in range(len(x)):  # one instance per request, as devices mostly send
        metrics.record_success(1.0, instances=1, features=_batch(x[row : row + 1], stats))
    return metrics


@pytest.fixture(scope="module")
def baseline() -> BaselineStats:
    x = _population(np.random.default_rng(1), 400)
    return BaselineStats(
        samples=400, class_frequencies=[0.5, 0.3, 0.2], input_features=input_feature_stats(x)
    )


def test_the_converter_records_bounded_feature_statistics(baseline: BaselineStats) -> None:
    stats = baseline.input_features
    assert stats is not None and stats.values == 12 and len(stats.mean) == 12
    assert all(sum(shares) == pytest.approx(1.0, abs=1e-5) for shares in stats.shares)
    assert stats.mode[7] == 0.0 and 0.4 < stats.mode_share[7] < 0.6  # the discrete features' zeros
    assert stats.precision_cholesky is not None and len(stats.precision_cholesky) == 12 * 13 // 2
    # An image is summarised to a bounded number of features: means of runs of its values.
    image = np.random.default_rng(2).random((50, 28, 28, 3)).astype(np.float32)
    big = input_feature_stats(image)
    assert big is not None and big.values == 28 * 28 * 3 and len(big.mean) == MAX_SUMMARY_FEATURES
    assert big.precision_cholesky is None  # too many features for the joint test's factor
    summary = summarize(image[:2])
    assert summary is not None and summary.shape == (2, MAX_SUMMARY_FEATURES)
    assert summary[0, 0] == pytest.approx(float(image[0].reshape(-1)[:36].mean()), rel=1e-5)
    assert summarize(image[:2], values=10) is None  # another shape is not judged against these stats


def test_feature_statistics_must_agree_in_length() -> None:
    with pytest.raises(ValidationError, match="one share more than it has edges"):
        FeatureStats(
            values=1, mean=[0.0], std=[1.0], mode=[0.0], mode_share=[0.1], edges=[[0.0]], shares=[[1.0]]
        )


def test_clean_windows_do_not_flag(baseline: BaselineStats) -> None:
    rng = np.random.default_rng(3)
    stats = baseline.input_features
    assert stats is not None
    worst = 0.0
    for size in (25, 100):
        for _ in range(150):
            window = _window(_population(rng, size), baseline).take().features
            assert window is not None
            found = input_drift(window, stats, baseline.samples)
            assert found is not None and found.stuck == 0
            worst = max(worst, found.significance)
    assert worst < THRESHOLD - 1, worst  # a margin below the fleet's default threshold


def test_a_dead_feature_and_a_shift_flag_and_are_named(baseline: BaselineStats) -> None:
    rng = np.random.default_rng(4)
    stats = baseline.input_features
    assert stats is not None
    dead = _population(rng, 50)
    dead[:, 2] = 0.0  # a sensor that reads 0: never in the baseline, constant over the window
    window = _window(dead, baseline).take().features
    assert window is not None
    found = input_drift(window, stats, baseline.samples)
    assert found is not None and found.stuck == 1 and found.feature == 2 and found.significance > THRESHOLD
    shifted = _population(rng, 100)
    shifted[:, 5] *= 3.0  # one heavy-tailed feature rescaled (a unit change)
    window = _window(shifted, baseline).take().features
    assert window is not None
    found = input_drift(window, stats, baseline.samples)
    assert found is not None and found.stuck == 0 and found.feature == 5 and found.significance > THRESHOLD
    # Too few instances: no verdict rather than a noisy one.
    small = _window(_population(rng, 10), baseline).take().features
    assert small is not None and input_drift(small, stats, baseline.samples) is None


def test_output_drift_needs_enough_predictions_and_sees_a_prior_change() -> None:
    shares = [0.5, 0.3, 0.2]
    assert output_drift([3, 1, 1], shares, 450) is None  # under 2 per class
    calm = output_drift([50, 30, 20], shares, 450)
    moved = output_drift([10, 20, 70], shares, 450)
    assert calm is not None and calm < 1 and moved is not None and moved > 10


def test_the_window_reports_drift_on_the_wire(baseline: BaselineStats) -> None:
    """The new members travel in the compact form and parse back; older windows still parse."""
    dead = _population(np.random.default_rng(5), 40)
    dead[:, 0] = 0.0
    metrics = _window(dead, baseline)
    classes = np.array([0] * 30 + [2] * 10, dtype=np.int64)
    metrics.record_success(1.0, classes=classes, confidences=np.full(40, 0.9, dtype=np.float32), instances=0)
    health = prediction_health(metrics.take(), baseline)
    assert health is not None and health.stuck_features == 1 and health.drift_feature == 0
    assert health.input_drift is not None and health.input_drift > THRESHOLD
    assert health.output_drift is not None
    now = datetime.now(UTC).replace(microsecond=0)
    resources = ResourceUsage(
        cpu_percent=1, process_rss_bytes=1, memory_used_percent=1, memory_available_bytes=1
    )
    window = TelemetryWindow(
        device_id="d1", seq=1, window_start=now, window_end=now, requests=80, resources=resources, uptime_s=1,
        prediction=health,
    )  # fmt: skip
    payload = encode_window(window)
    assert b'"dr":[' in payload and b'"input_drift"' not in payload
    assert parse_message(TelemetryWindow, payload) == window
    bad = payload.replace(b'"dr":[', b'"dr":[1,2,3,4,')
    with pytest.raises(MessageError, match=r"p\.dr must be"):
        parse_message(TelemetryWindow, bad)
    older = window.model_copy(update={"prediction": health.model_copy(update={"input_drift": None})})
    assert parse_message(TelemetryWindow, older.model_dump_json()).prediction == older.prediction


def test_dead_pixels_flag_through_the_real_api(
    bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real digits bundle (its baseline from the converter's code) and real requests: the
    baseline's own inputs do not flag; the same inputs with 16 dead pixels do, named as stuck."""
    from agent.http_api import InferenceAPI
    from agent.serving import ActiveModel, ModelHolder
    from agent.store import ModelStore
    from tests.support.agent import stage_directly

    sha = stage_directly(tmp_path / "state", bundles.v1, signing_keys[1])
    model = ActiveModel.load(ModelStore(tmp_path / "state").read(sha), runtime="tflite-runtime")
    baseline = model.manifest.baseline
    assert baseline is not None and baseline.input_features is not None
    holder, metrics = ModelHolder(), RequestMetrics()
    holder.swap(model)
    api = InferenceAPI("127.0.0.1", 0, holder, metrics).start()
    rows = np.resize(bundles.samples_x, (48, *bundles.samples_x.shape[1:]))
    varying = np.flatnonzero(np.asarray(baseline.input_features.std) > 0)[:16]
    dead = rows.reshape(len(rows), -1).copy()
    dead[:, varying] = 0.0
    try:
        for batch in (rows, dead.reshape(rows.shape)):
            for row in batch:
                response = requests.post(f"{api.url}/v1/predict", json={"inputs": [row.tolist()]}, timeout=10)
                response.raise_for_status()
            health = prediction_health(metrics.take(), baseline)
            assert health is not None and health.input_drift is not None
            if batch is rows:
                assert health.input_drift < THRESHOLD and health.stuck_features == 0
    finally:
        api.stop()
    assert health.input_drift > THRESHOLD and health.stuck_features is not None and health.stuck_features >= 8
