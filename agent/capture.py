"""Data capture for retraining: which served instances to keep, and getting them onto disk.

The serving path calls ``Capture.offer`` after a prediction succeeded. With capture off that is
one attribute read; with it on, a few comparisons pick the instances to keep, and the picked
instances are copied to an in-memory queue. A writer thread encodes the queue every half second
and commits it in one transaction to the capture store (``agent.capture_store``); the sender
(``agent.capture_sender``) uploads them to the fleet. The queue is bounded: when the writer
falls behind, further offers are dropped and counted, never waited for.

Which policy applies: the fleet's, when its desired state carries one (``DesiredState.capture``),
else the ``[capture]`` section of ``agent.toml``. The disk and bandwidth bounds are always the
local ones.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.capture_config import CaptureConfig
from agent.capture_store import CaptureStore
from agent.errors import AgentError
from agent.serving import ActiveModel, PredictResult
from protocol.capture import MAX_TENSOR_BYTES, CapturePolicy, CaptureReason
from protocol.schema import ModelRef

log = logging.getLogger(__name__)

FLUSH_S = 0.5
"""The writer commits what was queued this often: one fsync per period, not one per request."""
FLUSH_EARLY_BYTES = 1024 * 1024
"""...or as soon as this much is queued."""
MAX_QUEUED_BYTES = 8 * 1024 * 1024
"""Bytes of picked instances waiting for the writer; beyond this further ones are dropped (and
counted) rather than held in memory."""


@dataclass(frozen=True)
class _Offer:
    ts: float
    model: ModelRef
    input_names: list[str]
    output_names: list[str]
    inputs: list[npt.NDArray[Any]]
    """The picked instances only, in ``reasons``' order."""
    outputs: list[npt.NDArray[np.float32]]
    reasons: list[CaptureReason]
    nbytes: int


class Capture:
    """Owns the writer thread; the store is opened when capture is first on (or has samples)."""

    def __init__(self, config: CaptureConfig, store_path: Path) -> None:
        self.config = config
        self.store_path = store_path
        self.store: CaptureStore | None = None
        self._local = config.policy()
        self._remote: CapturePolicy | None = None
        self.policy = self._local
        self._drifting = False
        self._queue: deque[_Offer] = deque()
        self._queue_dropped = 0
        self._queued_bytes = 0
        self._drop_lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        """One flush at a time: stop()'s flush waits for the writer's, so what the writer took off
        the queue is on disk (or counted) before stop() returns, however slow the device."""
        self.on_store: list[Callable[[CaptureStore], None]] = []
        """Called with the store once it is open (the sender starts there)."""

    # -- the serving path --------------------------------------------------------------------
    def offer(self, model: ActiveModel, inputs: Sequence[npt.NDArray[Any]], result: PredictResult) -> None:
        """Pick the instances to keep and queue them; never blocks, never raises into serving."""
        policy = self.policy
        if not policy.enabled or self._thread is None:
            return
        try:
            picks = self._pick(policy, len(inputs[0]), result)
            if not picks:
                return
            rows = np.fromiter((i for i, _ in picks), dtype=np.intp, count=len(picks))
            kept_inputs = [a[rows] for a in inputs]  # copies: the request's buffers are not held
            kept_outputs = [t[rows] for t in result.tensors]
            nbytes = sum(a.nbytes for a in kept_inputs) + sum(t.nbytes for t in kept_outputs)
            with self._drop_lock:
                if self._queued_bytes + nbytes > MAX_QUEUED_BYTES:
                    self._queue_dropped += len(picks)
                    return
                self._queued_bytes += nbytes
                early = self._queued_bytes >= FLUSH_EARLY_BYTES
            offer = _Offer(
                time.time(),
                model.ref,
                [spec.name for spec in model.manifest.inputs],
                result.names,
                kept_inputs,
                kept_outputs,
                [reason for _, reason in picks],
                nbytes,
            )
            self._queue.append(offer)
            if early:
                self._wake.set()
        except Exception:  # capture must never cost a prediction
            log.exception("capture: could not queue a request's samples")

    def _pick(
        self, policy: CapturePolicy, count: int, result: PredictResult
    ) -> list[tuple[int, CaptureReason]]:
        reasons: dict[int, CaptureReason] = {}
        if policy.low_confidence_below is not None and result.confidences is not None:
            low = np.flatnonzero(result.confidences < policy.low_confidence_below)
            reasons.update((int(i), CaptureReason.LOW_CONFIDENCE) for i in low)
        if policy.out_of_range:
            for i in result.out_of_range:
                reasons.setdefault(i, CaptureReason.OUT_OF_RANGE)
        if self._drifting and policy.drift_above is not None:
            for i in range(count):
                reasons.setdefault(i, CaptureReason.DRIFT)
        rate = policy.rate
        if rate >= 1:
            for i in range(count):
                reasons.setdefault(i, CaptureReason.UNIFORM)
        elif rate > 0:
            draw = random.random
            for i in range(count):
                if draw() < rate:
                    reasons.setdefault(i, CaptureReason.UNIFORM)
        return sorted(reasons.items())

    # -- policy --------------------------------------------------------------------------------
    def observe_drift(self, drift_psi: float | None) -> None:
        """The last telemetry window's drift: the drift trigger is on while it is above."""
        threshold = self.policy.drift_above
        self._drifting = drift_psi is not None and threshold is not None and drift_psi > threshold

    def apply_remote(self, remote: CapturePolicy | None) -> None:
        """The fleet's policy from the desired state (None: back to the local one)."""
        if remote == self._remote:
            return
        self._remote = remote
        self._set_policy(remote or self._local, "the fleet's" if remote else "agent.toml's")

    def reload(self, config: CaptureConfig) -> None:
        """A changed ``[capture]`` (SIGHUP): new sampling unless the fleet's applies; the bounds
        apply at the next start."""
        self.config = config
        self._local = config.policy()
        if self._remote is None:
            self._set_policy(self._local, "agent.toml's")

    def _set_policy(self, policy: CapturePolicy, whose: str) -> None:
        if policy != self.policy:
            log.info("capture: %s policy now applies: %s", whose, policy.model_dump_json())
        self.policy = policy
        if policy.enabled:
            self.start()

    # -- the writer ----------------------------------------------------------------------------
    def start(self) -> Capture:
        """Open the store and start the writer, when capture is on or samples wait from before."""
        with self._start_lock:
            if self._thread is not None:
                return self
            if not (self.policy.enabled or self.store_path.exists()):
                return self
            try:
                self.store = CaptureStore(self.store_path, self.config.max_disk_bytes)
            except AgentError as exc:  # capture must never keep the agent from serving
                log.error("capture stays off: %s", exc)
                return self
            self._thread = threading.Thread(target=self._write_loop, name="capture-writer", daemon=True)
            self._thread.start()
        for callback in self.on_store:
            callback(self.store)
        return self

    def _write_loop(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Encode what is queued and commit it to the store (with the drops so far)."""
        with self._flush_lock:
            self._flush()

    def _flush(self) -> None:
        store = self.store
        if store is None:
            return
        payloads: list[bytes] = []
        skipped = freed = 0
        while self._queue:
            offer = self._queue.popleft()
            encoded = encode_offer(offer)
            payloads += encoded
            skipped += len(offer.reasons) - len(encoded)
            freed += offer.nbytes
        with self._drop_lock:
            dropped, self._queue_dropped = self._queue_dropped + skipped, 0
            self._queued_bytes -= freed
        if not payloads and not dropped:
            return
        try:
            store.put_many(payloads, dropped)
        except Exception:
            log.exception("capture: could not store %d sample(s); they are counted as dropped", len(payloads))
            with self._drop_lock:
                self._queue_dropped += len(payloads) + dropped

    def stop(self) -> None:
        """Write what is queued, then stop (samples on disk wait for the next start)."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
        self.flush()


def encode_offer(offer: _Offer) -> list[bytes]:
    """One ``CaptureSample`` JSON per picked instance (too-large tensors are left out)."""
    ts = datetime.fromtimestamp(offer.ts, UTC).isoformat()
    model = offer.model.model_dump(mode="json", exclude_none=True)
    out = []
    for index, reason in enumerate(offer.reasons):
        inputs = _tensors(offer.input_names, offer.inputs, index)
        outputs = _tensors(offer.output_names, offer.outputs, index)
        if inputs is None or outputs is None:
            continue
        sample = {
            "uid": uuid.uuid4().hex,
            "ts": ts,
            "model": model,
            "reason": reason.value,
            "inputs": inputs,
            "outputs": outputs,
        }
        out.append(json.dumps(sample, separators=(",", ":")).encode())
    return out


def _tensors(names: list[str], arrays: list[npt.NDArray[Any]], index: int) -> dict[str, Any] | None:
    tensors = {}
    for name, array in zip(names, arrays, strict=True):
        instance = array[index]
        if instance.nbytes > MAX_TENSOR_BYTES:
            return None
        # The wire form of ``CaptureTensor`` written directly: validating what this process
        # just encoded would double the writer's cost (the fleet validates every sample).
        little = np.ascontiguousarray(instance, dtype=instance.dtype.newbyteorder("<"))
        data = base64.b64encode(little.tobytes()).decode("ascii")
        tensors[name] = {"dtype": instance.dtype.name, "shape": list(instance.shape), "data": data}
    return tensors
