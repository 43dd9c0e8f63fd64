"""What the device has left: CPU, memory, disk and temperature, sampled with psutil.

Each reading is guarded: psutil under emulation or in a tight sandbox may fail on one of them,
and a telemetry window with the rest is worth more than none.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psutil

from protocol.messages import ResourceUsage

_T = TypeVar("_T")


def sample_temperature() -> float | None:
    """The first temperature sensor's reading in Celsius, or None (no sensor, no support, error)."""
    reader = getattr(psutil, "sensors_temperatures", None)
    if reader is None:
        return None
    try:
        sensors = reader()
    except Exception:
        return None
    for readings in (sensors or {}).values():
        for reading in readings:
            if reading.current is not None and math.isfinite(reading.current):
                return float(reading.current)
    return None


def guarded(read: Callable[[], _T], fallback: _T) -> _T:
    """psutil under emulation or in a tight sandbox may fail on one reading: report the rest."""
    try:
        return read()
    except Exception:
        return fallback


def sample_resources(state_dir: Path) -> ResourceUsage:
    memory = guarded(psutil.virtual_memory, None)
    return ResourceUsage(
        cpu_percent=round(max(0.0, guarded(lambda: psutil.cpu_percent(interval=None), 0.0)), 1),
        process_rss_bytes=guarded(lambda: psutil.Process().memory_info().rss, 0),
        memory_used_percent=round(min(100.0, max(0.0, memory.percent)), 1) if memory is not None else 0.0,
        memory_available_bytes=memory.available if memory is not None else 0,
        disk_free_bytes=guarded(lambda: psutil.disk_usage(str(state_dir)).free, None),
        temperature_c=sample_temperature(),
    )
