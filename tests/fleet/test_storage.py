"""Migrations, retention with hourly rollups, and chart series, on SQLite and PostgreSQL."""

from __future__ import annotations

import importlib.util
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, inspect, select

from fleet.ingest.decode import Decoded, Received, decode
from fleet.storage import create_engine_for_url, repository
from fleet.storage.migrate import current_revision, head_revision
from fleet.storage.retention import apply_retention
from fleet.storage.schema import metadata, telemetry, telemetry_hourly
from protocol.messages import LatencySummary, PredictionHealth, ResourceUsage, TelemetryWindow
from protocol.schema import ModelRef
from protocol.topics import Topics

TOPICS = Topics()
NOW = datetime(2025, 3, 20, 12, 0, tzinfo=UTC)


def test_migrations_build_exactly_the_schema(db_url: str) -> None:
    engine = create_engine_for_url(db_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert diff == [], diff
        # Starting again on a migrated database is a no-op.
        create_engine_for_url(db_url).dispose()
    finally:
        engine.dispose()


def test_a_database_made_before_migrations_is_upgraded(tmp_path: Path) -> None:
    """The first fleet built its tables with create_all: it is stamped at 0001 and upgraded in place."""
    old_schema = subprocess.run(
        ["git", "show", "40527a6:fleet/storage/schema.py"], capture_output=True, text=True, check=True
    ).stdout
    source = tmp_path / "old_schema.py"
    source.write_text(old_schema)
    spec = importlib.util.spec_from_file_location("old_schema", source)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = create_engine(url)
    module.metadata.create_all(old)
    old.dispose()
    engine = create_engine_for_url(url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("telemetry")}
        assert {"drift_psi", "low_confidence_share"} <= columns
        assert inspect(engine).has_table("rollouts")
    finally:
        engine.dispose()


def window(device_id: str, seq: int, end: datetime, p95: float, model: ModelRef | None) -> Decoded:
    message = TelemetryWindow(
        device_id=device_id,
        seq=seq,
        window_start=end - timedelta(seconds=60),
        window_end=end,
        model=model,
        requests=60,
        errors={"inference": 6} if seq % 2 else {},
        latency_ms=LatencySummary(p50=p95 / 2, p95=p95, p99=p95 * 1.5, max=p95 * 2),
        resources=ResourceUsage(
            cpu_percent=10 + seq % 3,
            process_rss_bytes=1 << 20,
            memory_used_percent=40,
            memory_available_bytes=1 << 30,
            temperature_c=50 + seq % 5,
        ),
        uptime_s=seq * 60,
        prediction=PredictionHealth(predictions=60, drift_psi=0.1, low_confidence_share=0.2),
    )
    item = decode(
        Received(TOPICS.telemetry(device_id), message.model_dump_json().encode(), end), TOPICS, 1 << 20
    )
    assert isinstance(item, Decoded)
    return item


def test_retention_rolls_old_windows_into_hours_and_series_reads_both(db_url: str) -> None:
    engine = create_engine_for_url(db_url)
    model = ModelRef(name="digits", version="1.0.0")
    try:
        # Three days of one window a minute, for one device (4,320 windows).
        start = NOW - timedelta(days=3)
        with engine.begin() as conn:
            for seq in range(3 * 24 * 60):
                end = start + timedelta(minutes=seq + 1)
                repository.store_decoded(
                    conn, window("pi-1", seq, end, p95=10 + (seq % 60) / 10, model=model)
                )
        result = apply_retention(engine, NOW, raw_days=1, hourly_days=2)
        with engine.begin() as conn:
            raw = conn.execute(select(func.count()).select_from(telemetry)).scalar_one()
            hours = conn.execute(select(telemetry_hourly).order_by(telemetry_hourly.c.hour)).all()
        assert raw == 24 * 60  # the last day stays raw
        assert result.windows_rolled_up == 2 * 24 * 60
        # Two days of hours were written; those older than two days expired right after.
        assert result.hourly_rows_written == 48 and result.hourly_rows_expired == 24
        assert len(hours) == 24 and hours[0].hour.replace(tzinfo=UTC) == NOW - timedelta(days=2)
        first = hours[0]
        assert first.windows == 60 and first.requests == 3600 and first.errors == 30 * 6
        assert abs(first.latency_p95_avg - (10 + 5.9 / 2)) < 1e-6 and first.latency_p95_max == 15.9
        assert first.temperature_c_max == 54 and abs(first.drift_psi_avg - 0.1) < 1e-9
        assert (first.model_name, first.model_version) == ("digits", "1.0.0")

        # Running again changes nothing; a later run expires hourly rows past their retention.
        again = apply_retention(engine, NOW, raw_days=1, hourly_days=2)
        assert again.windows_rolled_up == 0 and again.hourly_rows_expired == 0
        later = apply_retention(engine, NOW + timedelta(hours=5), raw_days=1, hourly_days=2)
        assert later.hourly_rows_expired == 5 and later.windows_rolled_up == 5 * 60

        with engine.begin() as conn:
            series = repository.telemetry_series(conn, "pi-1", NOW - timedelta(days=2), NOW, max_points=100)[
                "series"
            ]
            fine = repository.telemetry_series(conn, "pi-1", NOW - timedelta(hours=1), NOW, max_points=1000)[
                "series"
            ]
        assert 40 <= len(series["t"]) <= 100  # hourly rows for the older day, buckets for the raw day
        assert all(v is not None for v in series["latency_p95"])
        assert len(fine["t"]) == 60 and fine["throughput_rps"][0] == 1.0
        assert fine["error_rate"][:2] in ([0.0, 0.1], [0.1, 0.0])
    finally:
        engine.dispose()
