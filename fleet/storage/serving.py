"""What a device serves now and what it has committed, from its status, telemetry and commit event.

``devices.model_*`` is the serving model: the retained status says it (published at activation and
at every connect), and so does every telemetry window (the window's model is the one that answered).
``devices.committed_*`` follows the agent's commit: a ``commit`` event, or a status whose update
state is not ``activate``/``probation`` (the agent serves what it committed outside an install).

Each pair carries the device-clock time of the message that set it (``serving_at``,
``committed_at``): a message older than that changes nothing. A retained status handed over again
after a fleet restart, or telemetry windows replayed from the agent's outbox after a reconnect,
would otherwise turn the record back to a model the device no longer serves. Both times come from
the same device clock, so a board whose clock is wrong still orders its own messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import BindParameter, Connection, bindparam, or_, update

from fleet.storage.schema import devices
from fleet.storage.times import utc
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent
from protocol.schema import ModelRef
from protocol.update_state import UpdateState

UNCOMMITTED_STATES = frozenset({UpdateState.ACTIVATE, UpdateState.PROBATION})
"""Update states in which the served model may not be the committed one."""


def serving_columns(model: ModelRef, ts: datetime) -> dict[str, Any]:
    return {
        "model_name": model.name,
        "model_version": model.version,
        "model_sha256": model.sha256,
        "serving_at": utc(ts),
    }


def committed_columns(model: ModelRef, ts: datetime) -> dict[str, Any]:
    return {
        "committed_name": model.name,
        "committed_version": model.version,
        "committed_sha256": model.sha256,
        "committed_at": utc(ts),
    }


def status_model_columns(status: DeviceStatus) -> dict[str, Any]:
    """The serving (and, outside an install, committed) columns a status sets; empty without a model."""
    if status.model is None:
        return {}
    values = serving_columns(status.model, status.ts)
    if status.update_state not in UNCOMMITTED_STATES:
        values |= committed_columns(status.model, status.ts)
    return values


def _set_if_newer(conn: Connection, device_id: str, values: Mapping[str, Any], stamp: str) -> None:
    column = devices.c[stamp]
    conn.execute(
        update(devices)
        .where(devices.c.device_id == device_id, or_(column.is_(None), column <= values[stamp]))
        .values(**values)
    )


def record_models(conn: Connection, device_id: str, values: Mapping[str, Any]) -> None:
    """Apply ``status_model_columns``/``event_model_columns`` output, each pair only when newer."""
    serving = {k: v for k, v in values.items() if k.startswith("model_") or k == "serving_at"}
    committed = {k: v for k, v in values.items() if k.startswith("committed_")}
    if serving:
        _set_if_newer(conn, device_id, serving, "serving_at")
    if committed:
        _set_if_newer(conn, device_id, committed, "committed_at")


def event_model_columns(event: UpdateEvent) -> dict[str, Any]:
    """A successful commit: the target serves and is committed."""
    if event.state is not UpdateState.COMMIT or not event.ok:
        return {}
    return serving_columns(event.target, event.ts) | committed_columns(event.target, event.ts)


def record_window_models(conn: Connection, windows: Iterable[TelemetryWindow]) -> None:
    """The newest window per device names the model serving it, when newer than what set it.

    Written only when the model differs from the stored one, so the steady state costs one index
    lookup per device and batch, and no write.
    """
    newest: dict[str, TelemetryWindow] = {}
    for window in windows:
        if window.model is None:
            continue
        seen = newest.get(window.device_id)
        if seen is None or window.window_end > seen.window_end:
            newest[window.device_id] = window
    if not newest:
        return
    name: BindParameter[str] = bindparam("n")
    version: BindParameter[str] = bindparam("v")
    end: BindParameter[datetime] = bindparam("end")
    conn.execute(
        update(devices)
        .where(
            devices.c.device_id == bindparam("d"),
            or_(devices.c.serving_at.is_(None), devices.c.serving_at < end),
            or_(
                devices.c.model_name.is_(None),
                devices.c.model_name != name,
                devices.c.model_version != version,
            ),
        )
        .values(model_name=name, model_version=version, model_sha256=bindparam("sha"), serving_at=end),
        [
            {
                "d": device_id,
                "n": window.model.name,
                "v": window.model.version,
                "sha": window.model.sha256,
                "end": utc(window.window_end),
            }
            for device_id, window in sorted(newest.items())
            if window.model is not None
        ],
    )
