"""The agent's capture: what it picks from real predictions, the bounded durable store, and the
sender against a real fleet (hourly budget, a refused batch dropped and counted)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.capture import Capture
from agent.capture_config import CaptureConfig
from agent.capture_sender import CaptureSender
from agent.capture_store import ROW_OVERHEAD, CaptureStore
from agent.capture_upload import CaptureUploader
from agent.serving import ActiveModel
from agent.store import ModelStore
from edgefleet.mosquitto import MosquittoBroker
from protocol.capture import CapturePolicy, CaptureSample
from tests.support.agent import Bundles, stage_directly


@pytest.fixture(scope="module")
def model(
    bundles: Bundles, signing_keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> ActiveModel:
    state = tmp_path_factory.mktemp("capture-state")
    sha = stage_directly(state, bundles.v1, signing_keys[1])
    return ActiveModel.load(ModelStore(state).read(sha), runtime="tflite-runtime")


def _inputs(model: ActiveModel, count: int) -> np.ndarray[Any, Any]:
    """Instances inside the baseline's recorded range, feature by feature."""
    baseline = model.manifest.baseline
    assert baseline is not None and baseline.input_ranges
    low = np.array([r.min for r in baseline.input_ranges], dtype=np.float32)
    high = np.array([r.max for r in baseline.input_ranges], dtype=np.float32)
    x = np.random.default_rng(1).uniform(low, high, size=(count, len(low)))
    return x.astype(np.float32).reshape(count, 8, 8, 1)


def _stored(store: CaptureStore) -> list[CaptureSample]:
    return [CaptureSample.model_validate_json(p) for _, p in store.oldest(10_000)]


def test_capture_keeps_what_its_triggers_pick(model: ActiveModel, tmp_path: Path) -> None:
    x = _inputs(model, 40)
    x[5] *= 40  # far outside the baseline's range
    result = model.predict(x)
    assert result.confidences is not None and result.out_of_range == [5]
    capture = Capture(CaptureConfig(enabled=True, rate=0.0, out_of_range=True), tmp_path / "c.sqlite")
    capture.start()
    threshold = float(np.median(result.confidences))
    capture.apply_remote(CapturePolicy(rate=0.0, out_of_range=True, low_confidence_below=threshold))
    capture.offer(model, [x], result)
    capture.stop()
    assert capture.store is not None
    samples = _stored(capture.store)
    low = {int(i) for i in np.flatnonzero(result.confidences < threshold)}
    expected = low | {5}
    assert len(samples) == len(expected)
    kept = [s.inputs[model.manifest.inputs[0].name].array() for s in samples]
    np.testing.assert_array_equal(np.stack(kept), x[sorted(expected)])
    reasons = [s.reason.value for s in samples]
    assert reasons.count("out_of_range") == (0 if 5 in low else 1)
    assert samples[0].model.name == model.manifest.name and samples[0].outputs


def test_the_drift_trigger_follows_the_last_telemetry_window(model: ActiveModel, tmp_path: Path) -> None:
    x = _inputs(model, 6)
    result = model.predict(x)
    capture = Capture(CaptureConfig(enabled=True, rate=0.0, drift_above=0.25), tmp_path / "c.sqlite").start()
    capture.observe_drift(0.1)
    capture.offer(model, [x], result)
    capture.observe_drift(0.4)  # a window above the threshold: every instance is kept
    capture.offer(model, [x], result)
    capture.observe_drift(None)  # a window without predictions: off again
    capture.offer(model, [x], result)
    capture.stop()
    assert capture.store is not None
    assert [s.reason.value for s in _stored(capture.store)] == ["drift"] * 6


def test_capture_off_keeps_nothing_and_opens_no_store(model: ActiveModel, tmp_path: Path) -> None:
    x = _inputs(model, 4)
    capture = Capture(CaptureConfig(), tmp_path / "c.sqlite").start()
    capture.offer(model, [x], model.predict(x))
    capture.stop()
    assert capture.store is None and not (tmp_path / "c.sqlite").exists()


def test_the_store_is_bounded_durable_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "capture.sqlite"
    payload = b"x" * 1000
    store = CaptureStore(path, max_bytes=10 * (1000 + ROW_OVERHEAD))
    store.put_many([payload] * 8, dropped=2)
    store.put_many([payload] * 5)
    assert len(store) == 10 and store.dropped == 5  # 2 never stored, 3 oldest evicted
    first = store.oldest(1)[0][0]
    stream = store.stream
    store.close()
    again = CaptureStore(path, max_bytes=10 * (1000 + ROW_OVERHEAD))
    assert (len(again), again.dropped, again.stream) == (10, 5, stream)
    assert again.oldest(1)[0][0] == first
    again.ack([first])
    again.drop([first + 1])
    assert (len(again), again.dropped) == (8, 6)
    again.close()
    path.write_bytes(b"not a database at all" * 100)
    fresh = CaptureStore(path, max_bytes=1 << 20)
    assert len(fresh) == 0 and fresh.stream != stream
    assert list(tmp_path.glob("capture.sqlite.damaged-*"))


@pytest.mark.slow  # a Mosquitto and a fleet: not in the device install the aarch64 stage tests
def test_the_sender_keeps_to_its_budget_and_drops_only_a_refused_sample(
    model: ActiveModel, tmp_path: Path, broker: MosquittoBroker, signing_keys: tuple[Path, Path]
) -> None:
    # Runs where the fleet is installed (not in the device install of the aarch64 stage).
    pytest.importorskip("fastapi", reason="the fleet is not installed here")
    from tests.support.fleet import fleet_config, running_fleet

    x = _inputs(model, 30)
    with running_fleet(fleet_config(tmp_path / "fleet", broker, signing_keys)) as fleet:
        config = CaptureConfig(enabled=True, rate=1.0, batch_size=10)
        capture = Capture(config, tmp_path / "capture.sqlite").start()
        capture.offer(model, [x], model.predict(x))
        capture.flush()
        store = capture.store
        assert store is not None and len(store) == 30
        one = len(store.oldest(1)[0][1])
        uploader = CaptureUploader(fleet.url, None, 5, None, "test")

        def at_fleet() -> int:
            return sum(m["samples"] for m in fleet.json("/api/v1/capture")["models"])

        # An hourly budget of 5 samples uncompressed (below the setting's minimum, for a small
        # test): a batch is cut to what fits, and compression stretches it a little further.
        budget = 5 * one
        tight = CaptureSender(
            "dev-1", config.model_copy(update={"max_upload_bytes_per_hour": budget}), uploader
        )
        tight.store = store
        sent = 0
        for _ in range(10):
            sent += tight.send_once()[0]
        assert sum(n for _, n in tight._sent) <= budget
        assert 5 <= sent < 30 and at_fleet() == sent and len(store) == 30 - sent

        # A payload the fleet refuses (it is no sample) between good ones: only it is dropped.
        store.put_many([json.dumps({"uid": "nope"}).encode()])
        capture.offer(model, [x[:1]], model.predict(x[:1]))
        capture.flush()
        sender = CaptureSender("dev-1", config, uploader)
        sender.store = store
        for _ in range(10):
            sender.send_once()
        assert len(store) == 0 and store.dropped == 1
        assert at_fleet() == 31
        assert fleet.json("/api/v1/capture")["dropped"] == {"dev-1": 1}
        capture.stop()


def test_offer_never_blocks_serving_while_the_writer_is_stuck(model: ActiveModel, tmp_path: Path) -> None:
    x = _inputs(model, 64)
    result = model.predict(x)
    capture = Capture(CaptureConfig(enabled=True, rate=1.0), tmp_path / "c.sqlite").start()
    assert capture.store is not None
    store = capture.store
    with store._lock:  # the disk is stuck: the writer cannot commit
        done = threading.Event()

        def serve() -> None:
            for _ in range(2000):
                capture.offer(model, [x], result)
            done.set()

        threading.Thread(target=serve).start()
        assert done.wait(20), "offer blocked on a stuck store"
    capture.stop()
    kept = len(store)
    assert kept + store.dropped == 2000 * 64
