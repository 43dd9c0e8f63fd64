"""A device-list row straight to the JSON shape of ``DeviceView``, without building the model: at
1,000 devices a page, constructing and then re-validating the views cost more than the query.
``tests/fleet/test_device_list.py`` holds this to ``DeviceView`` field by field."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fleet.storage.metrics import METRIC_NAMES
from fleet.storage.times import utc
from fleet.views import NEVER_SEEN, DeviceState


def _ref(name: str | None, version: str | None, sha256: str | None = None) -> dict[str, Any] | None:
    if name is None or version is None:
        return None
    return {"name": name, "version": version, "sha256": sha256}


DEVICE_COLUMNS = (
    "device_id",
    "presence",
    "last_seen",
    "first_seen",
    "agent_version",
    "runtime",
    "model_name",
    "model_version",
    "model_sha256",
    "committed_name",
    "committed_version",
    "committed_sha256",
    "update_state",
    "config_report",
)
"""The ``devices`` columns of a row; from ``agent_version`` on, NULL for a never-seen device."""
ROW_COLUMNS = (
    "seen",
    *DEVICE_COLUMNS,
    "desired_name",
    "desired_version",
    "group_name",
    "tags",
    "revoked_at",
    "window_end",
    *METRIC_NAMES,
)
"""The columns of a device-list row, in this order (``fleet.storage.device_page`` selects them so):
the row is unpacked by position, several times faster than by name at 1,000 rows a page."""


def device_json(row: Sequence[Any]) -> dict[str, Any]:
    """One row of ``fleet.storage.device_page`` as ``DeviceView.model_dump()`` would give it
    (datetimes stay ``datetime``: pydantic_core's encoder writes them as the views do)."""
    (
        seen,
        device_id,
        presence,
        last_seen,
        first_seen,
        agent_version,
        runtime,
        model_name,
        model_version,
        model_sha256,
        committed_name,
        committed_version,
        committed_sha256,
        update_state,
        config_report,
        desired_name,
        desired_version,
        group_name,
        tags,
        revoked_at,
        window_end,
        *metrics,
    ) = row
    telemetry = None
    if window_end is not None:
        telemetry = {"window_end": utc(window_end), **dict(zip(METRIC_NAMES, metrics, strict=True))}
    if revoked_at is not None:
        state = DeviceState.REVOKED.value
    else:
        state = DeviceState.ACTIVE.value if seen else DeviceState.PROVISIONED.value
    return {
        "device_id": device_id,
        "state": state,
        "presence": presence if seen else NEVER_SEEN,
        "last_seen": utc(last_seen) if seen else None,
        "first_seen": utc(first_seen) if seen else None,
        "agent_version": agent_version,
        "runtime": runtime,
        "model": _ref(model_name, model_version, model_sha256),
        "committed": _ref(committed_name, committed_version, committed_sha256),
        "desired": _ref(desired_name, desired_version),
        "update_state": update_state,
        "telemetry": telemetry,
        "group": group_name,
        "tags": list(tags or []),
        "config": config_report,
    }
