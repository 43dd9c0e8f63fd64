"""Upload the capture store to the fleet in batches, within the hourly byte budget, with backoff.

A batch leaves the store only when the fleet answered with a receipt (``ack``), so a fleet
outage, a lost answer or an agent restart loses nothing: what was not acknowledged is sent
again, and the fleet stores each sample's uid once. A batch the fleet refuses as invalid (a
4xx that is not about credentials or load) would be refused again: its samples are then sent one
by one, and a sample refused alone is dropped and counted.
"""

from __future__ import annotations

import gzip
import json
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.capture_config import CaptureConfig
from agent.capture_store import CaptureStore
from agent.capture_upload import CaptureUploader, UploadError, UploadRefused

log = logging.getLogger(__name__)

HOUR_S = 3600.0
MAX_BACKOFF_S = 60.0


class CaptureSender:
    def __init__(
        self,
        device_id: str,
        config: CaptureConfig,
        uploader: CaptureUploader,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.device_id = device_id
        self.config = config
        self.uploader = uploader
        self.monotonic = monotonic
        self.store: CaptureStore | None = None
        self.sent_samples = 0
        self._sent: deque[tuple[float, int]] = deque()  # (when, bytes on the wire) in the last hour
        self._stopped = threading.Event()
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._isolate = 0  # after a refused batch: send this many samples one by one

    def start(self, store: CaptureStore) -> None:
        if self._thread is not None:
            return
        self.store = store
        self._thread = threading.Thread(target=self._loop, name="capture-sender", daemon=True)
        self._thread.start()

    def kick(self) -> None:
        self._kick.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopped.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        backoff = 0.0
        wait = self.config.upload_interval_s
        while not self._stopped.is_set():
            self._kick.wait(wait)
            self._kick.clear()
            if self._stopped.is_set():
                return
            try:
                sent, more = self.send_once()
            except UploadError as exc:
                backoff = min(MAX_BACKOFF_S, max(1.0, backoff * 2))
                wait = backoff * (0.5 + random.random() / 2)
                log.warning("capture: %s; retrying in %.0f s", exc, wait)
                continue
            except Exception:
                log.exception("capture: upload failed unexpectedly")
                wait = MAX_BACKOFF_S
                continue
            backoff = 0.0
            # A full batch sent: the next one at once; else wait for the interval (or the budget).
            wait = 0.0 if sent and more else self._budget_wait() or self.config.upload_interval_s

    def _room(self) -> int:
        """Bytes the hourly budget still allows now."""
        cutoff = self.monotonic() - HOUR_S
        while self._sent and self._sent[0][0] < cutoff:
            self._sent.popleft()
        return self.config.max_upload_bytes_per_hour - sum(n for _, n in self._sent)

    def _budget_wait(self) -> float:
        """Seconds until the budget frees some room, when it is spent; 0 when it is not."""
        if self._room() > 0 or not self._sent:
            return 0.0
        return max(1.0, self._sent[0][0] + HOUR_S - self.monotonic())

    def send_once(self) -> tuple[int, bool]:
        """Upload the oldest batch that fits the budget: (samples sent, whether more wait)."""
        store = self.store
        if store is None:
            return 0, False
        rows = store.oldest(1 if self._isolate else self.config.batch_size)
        if not rows:
            return 0, False
        room = self._room()
        taken: list[tuple[int, bytes]] = []
        size = 0
        for row_id, payload in rows:
            if size + len(payload) > room:
                break
            taken.append((row_id, payload))
            size += len(payload)
        if not taken:
            if len(rows[0][1]) > self.config.max_upload_bytes_per_hour:
                log.error(
                    "capture: a sample larger than max_upload_bytes_per_hour can never be sent; dropped"
                )
                store.drop([rows[0][0]])
            return 0, True
        head = json.dumps(
            {
                "schema_version": 1,
                "kind": "capture",
                "device_id": self.device_id,
                "stream": store.stream,
                "dropped": store.dropped,
            }
        ).encode()
        body = head[:-1] + b',"samples":[' + b",".join(p for _, p in taken) + b"]}"
        compressed = gzip.compress(body, compresslevel=6)
        ids = [row_id for row_id, _ in taken]
        try:
            self.uploader.send(compressed)
        except UploadRefused as exc:
            self._sent.append((self.monotonic(), len(compressed)))
            if len(ids) > 1:  # one bad sample must not cost the others: find it
                log.warning("capture: %s; sending the %d samples one by one", exc, len(ids))
                self._isolate = len(ids)
            else:
                log.error("capture: %s; the sample is dropped", exc)
                self._isolate = max(0, self._isolate - 1)
                store.drop(ids)
            return 0, True
        self._sent.append((self.monotonic(), len(compressed)))
        self._isolate = max(0, self._isolate - len(ids))
        store.ack(ids)
        self.sent_samples += len(ids)
        return len(ids), len(rows) == len(taken) and len(store) > 0
