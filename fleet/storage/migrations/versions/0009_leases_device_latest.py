"""Leader election leases, and each device's latest telemetry window (filled from the telemetry).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# The metric columns as of this revision (a later metric adds its column here by its own migration).
METRICS: tuple[tuple[str, sa.types.TypeEngine[Any], bool], ...] = (
    ("requests", sa.BigInteger(), False),
    ("errors", sa.BigInteger(), False),
    ("latency_p50", sa.Float(), True),
    ("latency_p95", sa.Float(), True),
    ("latency_p99", sa.Float(), True),
    ("cpu_percent", sa.Float(), False),
    ("process_rss_bytes", sa.BigInteger(), False),
    ("memory_used_percent", sa.Float(), False),
    ("temperature_c", sa.Float(), True),
    ("drift_psi", sa.Float(), True),
    ("low_confidence_share", sa.Float(), True),
    ("out_of_range_share", sa.Float(), True),
)


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("term", sa.BigInteger(), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "device_latest",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("telemetry_id", sa.BigInteger(), nullable=False),
        sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
        *(sa.Column(name, kind, nullable=nullable) for name, kind, nullable in METRICS),
        sa.PrimaryKeyConstraint("device_id"),
    )
    # The newest stored window of each device, as the device list showed it before this table.
    names = ", ".join(name for name, _kind, _nullable in METRICS)
    op.execute(
        f"INSERT INTO device_latest (device_id, telemetry_id, window_end, {names}) "
        f"SELECT device_id, id, window_end, {names} FROM telemetry "
        "WHERE id IN (SELECT MAX(id) FROM telemetry GROUP BY device_id)"
    )


def downgrade() -> None:
    op.drop_table("device_latest")
    op.drop_table("leases")
