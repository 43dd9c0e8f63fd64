"""The two wire forms of a ``TelemetryWindow``: the full form and the compact one agents send.

A busy window is sent every minute by every device, so its size is paid 1,440 times a day. In
the full form most of a window's bytes are member names (``memory_available_bytes``...), so the
agent sends the **compact form**: the same document with short member names (``COMPACT_NAMES``,
``MEMBER_NAMES``), ``latency_ms`` as the array ``[p50, p95, p99, max]``, ``window_start`` as Unix
seconds (``t0``) and ``window_end`` as the seconds after it (``dt``), and whole floats written as
integers. Both keep
``schema_version`` and ``kind`` under their own names, and both leave out members that equal the
schema's defaults (nulls, zero counters). Nothing is lost: parsing a compact window gives the
same ``TelemetryWindow`` as parsing its full form.

Readers accept both: ``TelemetryWindow`` expands a compact document before validating it (a
document is compact when it has ``t0`` and no ``window_start``), so the fleet still reads windows
from agents that send the full form, and stores every window in the full form
(``encode_full``), whichever form arrived.

No imports of the message types at run time: ``protocol.messages`` imports this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from protocol.messages import TelemetryWindow

__all__ = [
    "COMPACT_MARKER",
    "COMPACT_NAMES",
    "DURATION",
    "LATENCY_ORDER",
    "MEMBER_NAMES",
    "encode_compact",
    "encode_full",
    "expand",
    "is_compact",
    "is_compact_payload",
]

COMPACT_NAMES: Final[Mapping[str, str]] = {
    "device_id": "d",
    "seq": "s",
    "window_start": "t0",
    "window_end": "t1",
    "model": "m",
    "requests": "r",
    "errors": "e",
    "latency_ms": "l",
    "resources": "x",
    "uptime_s": "up",
    "prediction": "p",
    "dropped_messages": "drop",
}
"""Top-level member -> its compact name. ``schema_version`` and ``kind`` keep their names."""

MEMBER_NAMES: Final[Mapping[str, Mapping[str, str]]] = {
    "model": {"name": "n", "version": "v", "sha256": "h"},
    "latency_ms": {"p50": "p50", "p95": "p95", "p99": "p99", "max": "max"},
    "resources": {
        "cpu_percent": "cpu",
        "process_rss_bytes": "rss",
        "memory_used_percent": "mem",
        "memory_available_bytes": "avail",
        "disk_free_bytes": "disk",
        "temperature_c": "temp",
    },
    "prediction": {
        "predictions": "n",
        "mean_confidence": "mc",
        "confidence_p05": "p05",
        "low_confidence_share": "low",
        "class_counts": "cc",
        "output_histogram_counts": "oh",
        "drift_psi": "psi",
        "out_of_range_share": "oor",
        "nonfinite_inputs": "nf",
    },
}
"""Members of the nested objects -> their compact names. ``errors`` maps error kinds (data, not
names) to counts and is written as it is."""

DRIFT: Final = "dr"
DRIFT_ORDER: Final = ("input_drift", "drift_feature", "stuck_features", "output_drift")
"""The prediction's drift tests, as one compact array ``dr`` in this order (null: not measured;
trailing nulls left out): four named members would cost a busy device 20 KB a day more."""

LATENCY_ORDER: Final = ("p50", "p95", "p99", "max")
"""The compact form's ``l`` array, in this order."""

DURATION: Final = "dt"
"""``window_end`` as seconds after ``t0`` (both Unix seconds); ``t1`` when a time is not whole."""

COMPACT_MARKER: Final = COMPACT_NAMES["window_start"]
"""A compact document has this member (``window_start`` is required) and no ``window_start``."""

_KEEP: Final = ("schema_version", "kind")
_FULL_NAMES: Final = {short: full for full, short in COMPACT_NAMES.items()}
_FULL_MEMBER_NAMES: Final = {
    outer: {short: full for full, short in names.items()} for outer, names in MEMBER_NAMES.items()
}
_TIMES: Final = ("window_start", "window_end")
_EXACT_INT: Final = 2**53
"""Whole floats up to this are written as integers: beyond it a float is not exact anyway."""


def _full_document(window: TelemetryWindow) -> dict[str, Any]:
    body = window.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    return {"schema_version": window.schema_version, "kind": window.kind, **body}


def _dumps(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def encode_full(window: TelemetryWindow) -> bytes:
    """The full form: compact JSON with the schema's member names, without members that equal the
    defaults; what the fleet stores and what agents before the compact form sent."""
    return _dumps(_full_document(window))


def _short_number(value: Any) -> Any:
    """A whole float as an integer (``0.0`` -> ``0``): the same number to every JSON reader."""
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_INT:
        return int(value)
    if isinstance(value, list):
        return [_short_number(item) for item in value]
    return value


def _unix(value: datetime) -> int | None:
    """Unix seconds of a whole-second time with a zone (what the agent sends); None otherwise."""
    return int(value.timestamp()) if value.tzinfo is not None and value.microsecond == 0 else None


def _times(window: TelemetryWindow, full: dict[str, Any]) -> dict[str, Any]:
    start, end = _unix(window.window_start), _unix(window.window_end)
    if start is None or end is None:  # the full form's text, which readers accept as well
        return {COMPACT_NAMES[name]: full[name] for name in _TIMES}
    return {COMPACT_NAMES["window_start"]: start, DURATION: end - start}


def encode_compact(window: TelemetryWindow) -> bytes:
    """The compact form (see the module's docstring); ``expand`` undoes it."""
    full = _full_document(window)
    compact: dict[str, Any] = {name: full.pop(name) for name in _KEEP}
    for name, value in full.items():
        if name == "window_start":
            compact |= _times(window, full)
        elif name == "window_end":
            continue  # written with window_start
        elif name == "latency_ms":
            compact[COMPACT_NAMES[name]] = [_short_number(value[key]) for key in LATENCY_ORDER]
        elif name in MEMBER_NAMES and isinstance(value, dict):
            names = MEMBER_NAMES[name]
            members = {
                names[key]: _short_number(item) for key, item in value.items() if key not in DRIFT_ORDER
            }
            if name == "prediction":
                members |= _compact_drift(value)
            compact[COMPACT_NAMES[name]] = members
        else:
            compact[COMPACT_NAMES[name]] = _short_number(value)
    return _dumps(compact)


def _compact_drift(prediction: Mapping[str, Any]) -> dict[str, list[Any]]:
    drift = [_short_number(prediction.get(key)) for key in DRIFT_ORDER]
    while drift and drift[-1] is None:
        drift.pop()
    return {DRIFT: drift} if drift else {}


def is_compact(document: object) -> bool:
    return isinstance(document, dict) and COMPACT_MARKER in document and "window_start" not in document


def is_compact_payload(payload: bytes) -> bool:
    """Whether a payload is a compact window; parses it only when its bytes hold the marker."""
    if f'"{COMPACT_MARKER}"'.encode() not in payload:
        return False
    try:
        return is_compact(json.loads(payload))
    except (ValueError, UnicodeDecodeError):
        return False


def _expand_members(outer: str, value: object) -> object:
    if outer == "latency_ms" and isinstance(value, list):
        if len(value) != len(LATENCY_ORDER):
            raise ValueError(
                f"compact telemetry window: {COMPACT_NAMES[outer]} must be [{', '.join(LATENCY_ORDER)}], "
                f"got {len(value)} values"
            )
        return dict(zip(LATENCY_ORDER, value, strict=True))
    names = _FULL_MEMBER_NAMES.get(outer)
    if names is None or not isinstance(value, dict):
        return value  # ``errors``, or a wrong type the schema then refuses by its full name
    expanded: dict[str, object] = {}
    for short, item in value.items():
        if outer == "prediction" and short == DRIFT:
            expanded |= _expand_drift(item)
            continue
        if short not in names:
            raise ValueError(
                f"compact telemetry window: {COMPACT_NAMES[outer]}.{short} is not a compact member "
                f"name of {outer} (expected one of {', '.join(sorted(names))})"
            )
        expanded[names[short]] = item
    return expanded


def _expand_drift(value: object) -> dict[str, object]:
    if not isinstance(value, list) or len(value) > len(DRIFT_ORDER):
        raise ValueError(
            f"compact telemetry window: p.{DRIFT} must be [{', '.join(DRIFT_ORDER)}] (trailing ones may "
            f"be left out), got {value!r}"
        )
    return {name: item for name, item in zip(DRIFT_ORDER, value, strict=False) if item is not None}


def _window_end(start: object, duration: object) -> object:
    if (
        isinstance(start, int | float)
        and isinstance(duration, int | float)
        and not isinstance(start, bool)
        and not isinstance(duration, bool)
    ):
        return start + duration
    raise ValueError(
        f"compact telemetry window: {DURATION} (seconds after {COMPACT_MARKER}) needs "
        f"{COMPACT_MARKER} in Unix seconds; got {COMPACT_MARKER}={start!r}, {DURATION}={duration!r}"
    )


def expand(document: object) -> object:
    """The full-form document of a compact one; anything else unchanged (the schema judges it).

    A compact document may only use compact names: a full name in it is refused by name, so a
    half-converted document never passes for a valid one."""
    if not isinstance(document, dict) or not is_compact(document):
        return document
    expanded: dict[str, object] = {}
    for short, value in document.items():
        if short in _KEEP:
            expanded[short] = value
        elif short == DURATION:
            expanded["window_end"] = _window_end(document[COMPACT_MARKER], value)
        elif short in _FULL_NAMES:
            full = _FULL_NAMES[short]
            expanded[full] = _expand_members(full, value)
        else:
            raise ValueError(
                f"compact telemetry window: {short!r} is not a compact member name (expected one "
                f"of {', '.join(sorted([*_FULL_NAMES, DURATION]))}, schema_version, kind)"
            )
    return expanded
