"""A device-list row straight to the JSON shape of ``DeviceView``, without building the model: at
1,000 devices a page, constructing and then re-validating the views cost more than the query.
``tests/fleet/test_device_list.py`` holds this to ``DeviceView`` field by field."""

from __future__ import annotations

from typing import Any

from fleet.storage.metrics import METRIC_NAMES
from fleet.storage.times import utc
from fleet.views import NEVER_SEEN, DeviceState


def _ref(name: str | None, version: str | None, sha256: str | None = None) -> dict[str, Any] | None:
    if name is None or version is None:
        return None
    return {"name": name, "version": version, "sha256": sha256}


def _state(row: Any) -> str:
    if row.revoked_at is not None:
        return DeviceState.REVOKED.value
    return DeviceState.ACTIVE.value if row.seen else DeviceState.PROVISIONED.value


def device_json(row: Any) -> dict[str, Any]:
    """One row of ``fleet.storage.device_page`` as ``DeviceView.model_dump()`` would give it
    (datetimes stay ``datetime``: pydantic_core's encoder writes them as the views do)."""
    telemetry = None
    if row.window_end is not None:
        mapping = row._mapping
        telemetry = {"window_end": utc(row.window_end), **{name: mapping[name] for name in METRIC_NAMES}}
    seen = bool(row.seen)
    return {
        "device_id": row.device_id,
        "state": _state(row),
        "presence": row.presence if seen else NEVER_SEEN,
        "last_seen": utc(row.last_seen) if seen else None,
        "first_seen": utc(row.first_seen) if seen else None,
        "agent_version": row.agent_version,
        "runtime": row.runtime,
        "model": _ref(row.model_name, row.model_version, row.model_sha256),
        "committed": _ref(row.committed_name, row.committed_version, row.committed_sha256),
        "desired": _ref(row.desired_name, row.desired_version),
        "update_state": row.update_state,
        "telemetry": telemetry,
        "group": row.group_name,
        "tags": list(row.tags or []),
    }
