"""Telemetry: the drift tests' results (input-feature drift, stuck features, output drift), raw,
hourly maxima and in each device's latest window.

Revision ID: 0013_input_drift
Revises: 0012_remote_config
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0013_input_drift"
down_revision = "0012_remote_config"
branch_labels = None
depends_on = None

COLUMNS: tuple[tuple[str, sa.types.TypeEngine[Any]], ...] = (
    ("input_drift", sa.Float()),
    ("stuck_features", sa.BigInteger()),
    ("output_drift", sa.Float()),
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("telemetry", sa.Column(name, kind, nullable=True))
        op.add_column("device_latest", sa.Column(name, kind, nullable=True))
        # Rollups of gauges are floats whatever the raw column (``fleet.storage.schema``).
        op.add_column("telemetry_hourly", sa.Column(f"{name}_max", sa.Float(), nullable=True))


def downgrade() -> None:
    for name, _kind in reversed(COLUMNS):
        op.drop_column("telemetry_hourly", f"{name}_max")
        op.drop_column("device_latest", name)
        op.drop_column("telemetry", name)
