"""Storing what devices send: status, telemetry windows and update events (redeliveries once), and
dead letters with their retention."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fleet.storage.engine import RawJson
from fleet.storage.latest import upsert_latest
from fleet.storage.metrics import metric_values
from fleet.storage.records import DeadLetter, Decoded
from fleet.storage.schema import dead_letter_digests, dead_letters, devices, events, telemetry
from fleet.storage.serving import (
    event_model_columns,
    record_models,
    record_window_models,
    status_model_columns,
)
from fleet.storage.times import utc
from fleet.storage.window_rows import window_values
from fleet.storage.window_store import Window, store_windows
from fleet.views import DeadLetterRow
from protocol.messages import DeviceStatus, TelemetryWindow, UpdateEvent

DEAD_LETTER_DAYS = 30.0
DEAD_LETTER_CAP = 10_000
"""Dead letters kept at most, enforced as each batch is stored: a device flooding poison cannot fill
the disk between two retention runs."""
SEEN_DIGESTS_CAP = 100_000
"""Digests of retained or resent poison remembered at most (a broker retains one message per topic,
so a fleet holds far fewer), the least recently seen forgotten first."""


def store_dead_letter(conn: Connection, letter: DeadLetter) -> bool:
    """Record a dead letter; False when it is a redelivery of one already recorded.

    A retained or resent message's digest is also remembered in ``dead_letter_digests``, which
    outlives the dead letter: the broker hands a retained message over at every subscribe, long after
    its dead letter has expired, and it is not recorded again.
    """
    remember = letter.redelivered and bool(letter.digest)
    received_at = utc(letter.received_at)
    if remember and _seen_before(conn, letter.digest, received_at):
        return False
    conn.execute(insert(dead_letters).values(**dead_letter_row(letter)))
    if remember:
        seen = {"digest": letter.digest, "seen_at": received_at}
        _insert_ignoring_duplicate(conn, dead_letter_digests, seen, ("digest",))
    return True


def dead_letter_row(letter: DeadLetter) -> dict[str, Any]:
    return {
        "topic": letter.topic,
        "reason": letter.reason.value,
        "detail": letter.detail,
        "payload_prefix": letter.payload_prefix,
        "payload_size": letter.payload_size,
        "received_at": utc(letter.received_at),
        "digest": letter.digest or None,
    }


def _seen_before(conn: Connection, digest: str, at: datetime) -> bool:
    """Whether a message with this digest was dead-lettered before; refreshes when it was last seen
    (so the digests of retained messages still handed over are the last to be forgotten)."""
    refreshed = conn.execute(
        update(dead_letter_digests).where(dead_letter_digests.c.digest == digest).values(seen_at=at)
    ).rowcount
    if refreshed:
        return True
    # Its first delivery was live (not flagged retained or resent): its dead letter has the digest.
    found = conn.execute(select(dead_letters.c.id).where(dead_letters.c.digest == digest).limit(1)).first()
    return found is not None


def cap_dead_letters(conn: Connection, keep_at_most: int) -> int:
    """Delete the oldest dead letters beyond the newest ``keep_at_most``; how many went.

    Ids only grow, so while the newest and the oldest are fewer than ``keep_at_most`` apart there
    cannot be more (two ends of the primary key index: what a batch with a dead letter pays). Past
    that, one backward walk of the index to the cap's edge, then a range delete.
    """
    span = conn.execute(select(func.max(dead_letters.c.id) - func.min(dead_letters.c.id))).scalar()
    if span is None or span < keep_at_most:
        return 0
    newest_dropped = conn.execute(
        select(dead_letters.c.id).order_by(dead_letters.c.id.desc()).offset(keep_at_most).limit(1)
    ).scalar()
    if newest_dropped is None:
        return 0
    return max(conn.execute(delete(dead_letters).where(dead_letters.c.id <= newest_dropped)).rowcount, 0)


def cap_seen_digests(conn: Connection, keep_at_most: int = SEEN_DIGESTS_CAP) -> int:
    """Forget the least recently seen digests beyond ``keep_at_most``."""
    column = dead_letter_digests.c.seen_at
    edge = conn.execute(select(column).order_by(column.desc()).offset(keep_at_most).limit(1)).scalar()
    if edge is None:
        return 0
    return max(conn.execute(delete(dead_letter_digests).where(column <= edge)).rowcount, 0)


def expire_dead_letters(conn: Connection, older_than: datetime, keep_at_most: int) -> int:
    """Delete dead letters received before ``older_than``, then the oldest beyond ``keep_at_most``
    (and forget the oldest digests beyond their own bound; they do not expire with age, as a
    retained message does not)."""
    expired = conn.execute(delete(dead_letters).where(dead_letters.c.received_at < older_than)).rowcount
    cap_seen_digests(conn)
    return max(expired, 0) + cap_dead_letters(conn, keep_at_most)


def store_decoded(conn: Connection, item: Decoded) -> bool:
    """Store one valid device message; False when it was a duplicate (a QoS 1 redelivery)."""
    message = item.message
    received_at = utc(item.received_at)
    if isinstance(message, DeviceStatus):
        _store_status(conn, message, received_at)
        return True
    if isinstance(message, TelemetryWindow):
        return _store_telemetry(conn, message, received_at)
    return _store_event(conn, message, received_at)


def store_batch(
    conn: Connection, items: Iterable[Decoded | DeadLetter], dead_letter_cap: int = DEAD_LETTER_CAP
) -> tuple[int, int, list[DeadLetter]]:
    """Store a batch in the caller's transaction; returns (stored, duplicates, dead letters recorded).

    Telemetry windows, the bulk of the stream, go in with a fixed number of statements per batch
    (``window_store``); status and events keep their order. A redelivered dead letter already
    recorded is not recorded again, nor returned. When the batch recorded dead letters and there
    may now be more than ``dead_letter_cap``, the oldest beyond it are deleted in the same transaction.
    """
    stored = duplicates = 0
    letters: list[DeadLetter] = []
    fresh: list[DeadLetter] = []
    windows: list[Window] = []
    for item in items:
        if isinstance(item, DeadLetter):
            if not (item.redelivered and item.digest):
                fresh.append(item)  # nothing to look up: recorded with the others, in one statement
            elif store_dead_letter(conn, item):
                letters.append(item)
        elif isinstance(item.message, TelemetryWindow) and conn.dialect.name in ("sqlite", "postgresql"):
            values = item.values or window_values(item.message, item.received_at, item.raw)
            windows.append((item.message, values))
        elif store_decoded(conn, item):
            stored += 1
        else:
            duplicates += 1
    if windows:
        inserted = store_windows(conn, windows)
        stored += inserted
        duplicates += len(windows) - inserted
    if fresh:
        conn.execute(insert(dead_letters), [dead_letter_row(letter) for letter in fresh])
        letters += fresh
    if letters:
        cap_dead_letters(conn, dead_letter_cap)
        if any(letter.redelivered for letter in letters):
            cap_seen_digests(conn)
    return stored, duplicates, letters


def status_values(status: DeviceStatus, received_at: datetime) -> dict[str, Any]:
    """The ``devices`` columns a status message sets."""
    values: dict[str, Any] = {
        "presence": status.presence.value,
        "status_ts": utc(status.ts),
        "last_seen": received_at,
        "agent_version": status.agent_version,
        "runtime": status.runtime,
        **status_model_columns(status),
    }
    if status.update_state is not None:
        values["update_state"] = status.update_state
    if status.config is not None:
        values["config_report"] = status.config.model_dump(mode="json")
    return values


def _store_status(conn: Connection, status: DeviceStatus, received_at: datetime) -> None:
    values = status_values(status, received_at)
    models = status_model_columns(status)
    plain = {key: value for key, value in values.items() if key not in models}
    changed = conn.execute(
        update(devices).where(devices.c.device_id == status.device_id).values(**plain)
    ).rowcount
    if not changed:
        conn.execute(insert(devices).values(device_id=status.device_id, first_seen=received_at, **values))
    else:
        record_models(conn, status.device_id, models)


def _touch(conn: Connection, device_id: str, received_at: datetime, **values: Any) -> None:
    conn.execute(
        update(devices).where(devices.c.device_id == device_id).values(last_seen=received_at, **values)
    )


def _store_telemetry(conn: Connection, window: TelemetryWindow, received_at: datetime) -> bool:
    row = telemetry_row(window, received_at)
    if not _insert_ignoring_duplicate(conn, telemetry, row, ("device_id", "seq", "window_start")):
        return False
    stored = telemetry.c.device_id == row["device_id"], telemetry.c.seq == row["seq"]
    found = select(telemetry.c.id).where(*stored, telemetry.c.window_start == row["window_start"])
    upsert_latest(conn, [{**row, "telemetry_id": conn.execute(found).scalar_one()}])
    _touch(conn, window.device_id, received_at)
    record_window_models(conn, [window])
    return True


def telemetry_row(window: TelemetryWindow, received_at: datetime, raw: bytes | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "device_id": window.device_id,
        "seq": window.seq,
        "window_start": utc(window.window_start),
        "window_end": utc(window.window_end),
        "received_at": received_at,
        "model_name": window.model.name if window.model else None,
        "model_version": window.model.version if window.model else None,
        **metric_values(window),
        # The payload exactly as the device sent it (validated): no second serialization.
        "payload": RawJson(raw.decode()) if raw is not None else window.model_dump(mode="json"),
    }
    return row


def event_row(event: UpdateEvent, received_at: datetime) -> dict[str, Any]:
    """The ``events`` row of one update transition."""
    return {
        "device_id": event.device_id,
        "ts": utc(event.ts),
        "received_at": received_at,
        "update_id": event.update_id,
        "state": event.state,
        "ok": event.ok,
        "reason": event.reason,
        "target_name": event.target.name,
        "target_version": event.target.version,
        "target_sha256": event.target.sha256,
        "previous_name": event.previous.name if event.previous else None,
        "previous_version": event.previous.version if event.previous else None,
        "payload": event.model_dump(mode="json"),
    }


def _store_event(conn: Connection, event: UpdateEvent, received_at: datetime) -> bool:
    row = event_row(event, received_at)
    if not _insert_ignoring_duplicate(conn, events, row, ("device_id", "update_id", "state", "ts")):
        return False
    _touch(conn, event.device_id, received_at, update_state=event.state)
    record_models(conn, event.device_id, event_model_columns(event))
    return True


def _insert_ignoring_duplicate(
    conn: Connection, table: Table, row: Mapping[str, Any], keys: Sequence[str]
) -> bool:
    """INSERT unless a row with the same ``keys`` exists; True when a row was inserted."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        lite = sqlite_insert(table).values(**row).on_conflict_do_nothing(index_elements=list(keys))
        return bool(conn.execute(lite).rowcount)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        # psycopg reports rowcount -1 for this statement: ask for a returned row instead.
        pg = (
            pg_insert(table)
            .values(**row)
            .on_conflict_do_nothing(index_elements=list(keys))
            .returning(table.c[keys[0]])
        )
        return conn.execute(pg).first() is not None
    try:
        with conn.begin_nested():
            conn.execute(insert(table).values(**row))
    except IntegrityError:
        return False
    return True


def list_dead_letters(conn: Connection, limit: int) -> list[DeadLetterRow]:
    query = select(dead_letters).order_by(dead_letters.c.id.desc()).limit(limit)
    return [
        DeadLetterRow(
            id=row.id,
            topic=row.topic,
            reason=row.reason,
            detail=row.detail,
            payload_prefix=row.payload_prefix,
            payload_size=row.payload_size,
            received_at=utc(row.received_at),
        )
        for row in conn.execute(query)
    ]
