"""The telemetry fast path (``fleet.storage.window_store``) on real SQLite and PostgreSQL: the rows,
the latest windows, last seen and the serving model come out as the per-statement path wrote them,
and a driver error is SQLAlchemy's (an unavailable database is retried, never dead-lettered)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import OperationalError

from fleet.ingest.decode import Decoded, Received, decode
from fleet.storage import create_engine_for_url, repository
from fleet.storage.fit import window_problem
from fleet.storage.ingest import status_values
from fleet.storage.schema import device_latest, devices, telemetry
from fleet.storage.window_rows import WINDOW_COLUMNS
from fleet.storage.window_store import sqlite_time
from protocol.messages import DeviceStatus, Presence, TelemetryWindow
from protocol.schema import ModelRef
from protocol.topics import Topics
from tests.fleet.mqtt_helpers import NOW
from tests.fleet.mqtt_helpers import telemetry as telemetry_payload

TOPICS = Topics()
V1 = ModelRef(name="digits", version="1.0.0")
V2 = ModelRef(name="digits", version="2.0.0", sha256="ab" * 32)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = create_engine_for_url(db_url)
    yield engine
    engine.dispose()


def _window(
    device_id: str, seq: int, model: ModelRef | None, received_s: float, offset_h: int = 0
) -> Decoded:
    """A window decoded as the ingester decodes it (row built and checked there); its times written
    with a UTC offset of ``offset_h`` hours, as a device in another time zone may."""
    window = TelemetryWindow.model_validate_json(telemetry_payload(device_id, seq=seq))
    zone = timezone(timedelta(hours=offset_h))
    changes = {
        "model": model,
        "window_start": window.window_start.astimezone(zone),
        "window_end": window.window_end.astimezone(zone),
    }
    payload = window.model_copy(update=changes).model_dump_json().encode()
    received = Received(TOPICS.telemetry(device_id), payload, NOW + timedelta(seconds=received_s))
    item = decode(received, TOPICS, 1 << 20)
    assert isinstance(item, Decoded) and item.values is not None
    return item


def _device(engine: Engine, device_id: str, model: ModelRef, ts: datetime) -> None:
    status = DeviceStatus(
        device_id=device_id, presence=Presence.ONLINE, ts=ts, agent_version="0.1.0", runtime="t", model=model
    )
    with engine.begin() as conn:
        values = status_values(status, ts)
        conn.execute(devices.insert().values(device_id=device_id, first_seen=ts, **values))


def _device_row(engine: Engine, device_id: str) -> tuple[str | None, datetime | None, datetime]:
    with engine.connect() as conn:
        row = conn.execute(select(devices).where(devices.c.device_id == device_id)).one()
    return row.model_version, row.serving_at, row.last_seen.replace(tzinfo=UTC)


def test_a_batch_sets_rows_latest_windows_last_seen_and_the_serving_model(engine: Engine) -> None:
    _device(engine, "pi-1", V1, NOW - timedelta(hours=1))
    first = [
        _window("pi-1", 2, V2, received_s=30),
        _window("pi-1", 2, V2, received_s=30),  # the same window twice in one batch
        _window("pi-2", 0, None, received_s=35),  # no devices row yet: stored all the same
        _window("pi-1", 1, V2, received_s=40),  # replayed from the outbox: older window, later arrival
    ]
    with engine.begin() as conn:
        assert repository.store_batch(conn, first)[:2] == (3, 1)
    version, serving_at, last_seen = _device_row(engine, "pi-1")
    assert isinstance(first[0].message, TelemetryWindow)
    newest_end = first[0].message.window_end
    assert version == V2.version and serving_at is not None
    assert serving_at.replace(tzinfo=UTC) == newest_end  # the newest window's end, not the last one's
    assert last_seen == NOW + timedelta(seconds=40)
    with engine.connect() as conn:
        stored = {
            (row.device_id, row.seq): row
            for row in conn.execute(select(telemetry.c.id, telemetry.c.device_id, telemetry.c.seq))
        }
        latest = {row.device_id: row.telemetry_id for row in conn.execute(select(device_latest))}
        window_end = conn.execute(select(telemetry.c.window_end).where(telemetry.c.seq == 2)).scalar_one()
    assert set(stored) == {("pi-1", 1), ("pi-1", 2), ("pi-2", 0)}
    # The newest stored row is the latest window (the replayed one was stored last).
    assert latest == {"pi-1": stored[("pi-1", 1)].id, "pi-2": stored[("pi-2", 0)].id}
    assert window_end.replace(tzinfo=UTC) == newest_end  # timestamps read back as they went in

    # A redelivery changes nothing; an older window naming another model does not turn the device
    # back to it; last seen only moves forward.
    again = [_window("pi-1", 2, V2, received_s=50), _window("pi-1", 0, V1, received_s=20)]
    with engine.begin() as conn:
        assert repository.store_batch(conn, again)[:2] == (1, 1)
    assert _device_row(engine, "pi-1") == (V2.version, serving_at, NOW + timedelta(seconds=50))

    # A newer window from a clock two hours east of UTC: compared and stored as the same instant.
    east = _window("pi-1", 5, V1, received_s=60, offset_h=2)
    with engine.begin() as conn:
        assert repository.store_batch(conn, [east])[:2] == (1, 0)
    version, serving_at, _ = _device_row(engine, "pi-1")
    assert isinstance(east.message, TelemetryWindow) and serving_at is not None
    assert (version, serving_at.replace(tzinfo=UTC)) == (V1.version, east.message.window_end)


def test_sqlite_timestamps_are_written_as_sqlalchemy_writes_them() -> None:
    dialect = sqlite.dialect()
    write = telemetry.c.window_start.type.dialect_impl(dialect).bind_processor(dialect)
    assert write is not None
    for value in (NOW, NOW + timedelta(microseconds=7), datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC)):
        assert sqlite_time(value) == write(value)


def test_a_locked_sqlite_database_is_an_operational_error(tmp_path: Path) -> None:
    """What the ingester retries (unacknowledged) rather than dead-letters message by message."""
    url = f"sqlite:///{tmp_path / 'fleet.db'}"
    engine, holder = create_engine_for_url(url), create_engine_for_url(url)
    try:
        with holder.connect() as locker:
            locker.exec_driver_sql("BEGIN EXCLUSIVE")
            with pytest.raises(OperationalError, match="locked"), engine.begin() as conn:
                conn.exec_driver_sql("PRAGMA busy_timeout = 0")
                repository.store_batch(conn, [_window("pi-1", 0, V1, received_s=0)])
            locker.exec_driver_sql("ROLLBACK")
    finally:
        engine.dispose()
        holder.dispose()


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("seq", 2**63, "seq = 9223372036854775808 does not fit a 64-bit integer column"),
        ("cpu_percent", float("inf"), "cpu_percent = inf is not a finite number"),
        ("cpu_percent", None, "cpu_percent is missing (or NaN)"),
        ("model_name", "digits\x00", "model_name contains a NUL character"),
        ("model_version", "v" * 129, "model_version is 129 characters long; the column holds 128"),
    ],
)
def test_a_window_value_its_column_cannot_hold_is_named(column: str, value: object, problem: str) -> None:
    values = _window("pi-1", 0, V1, received_s=0).values
    assert values is not None and window_problem(values) is None
    changed = tuple(value if name == column else v for name, v in zip(WINDOW_COLUMNS, values, strict=True))
    assert window_problem(changed) == problem
