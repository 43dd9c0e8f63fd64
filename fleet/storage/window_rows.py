"""A telemetry window as the ``telemetry`` row it becomes, built once when the message is decoded
(checked against the columns there, written as is): the writer thread, which every message waits
for, does not walk the window's model again."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fleet.storage.metrics import METRIC_NAMES, METRICS
from fleet.storage.times import utc
from protocol.messages import TelemetryWindow

WINDOW_COLUMNS: tuple[str, ...] = (
    "device_id",
    "seq",
    "window_start",
    "window_end",
    "received_at",
    "model_name",
    "model_version",
    *METRIC_NAMES,
    "payload",
)
"""The ``telemetry`` columns a window sets, in the order of ``window_values``."""
TIME_INDEXES = (2, 3, 4)
"""Where the timestamps are in a row (SQLite stores them as text)."""
END, RECEIVED, MODEL_NAME, MODEL_VERSION = 3, 4, 5, 6
PAYLOAD = len(WINDOW_COLUMNS) - 1
_READERS = tuple(metric.read for metric in METRICS)


def window_values(window: TelemetryWindow, received_at: datetime, raw: bytes | None) -> tuple[Any, ...]:
    """The row of one window; ``raw`` is its validated JSON as received (None: serialized here)."""
    model = window.model
    payload = raw.decode() if raw is not None else json.dumps(window.model_dump(mode="json"))
    return (
        window.device_id,
        window.seq,
        utc(window.window_start),
        utc(window.window_end),
        utc(received_at),
        model.name if model else None,
        model.version if model else None,
        *[read(window) for read in _READERS],
        payload,
    )
