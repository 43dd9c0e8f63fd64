"""Remote configuration (per device or group, and each device's report) and remote log requests.

Revision ID: 0012_remote_config
Revises: 0011_alert_pending
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012_remote_config"
down_revision = "0011_alert_pending"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("config_report", sa.JSON(), nullable=True))
    op.create_table(
        "device_config",
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        sa.Column("revision", sa.String(length=64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )
    op.create_table(
        "log_requests",
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lines", sa.Integer(), nullable=True),
        sa.Column("truncated", sa.Boolean(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=True),
        sa.PrimaryKeyConstraint("request_id"),
    )
    op.create_index("ix_log_requests_requested", "log_requests", ["requested_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_log_requests_requested", table_name="log_requests")
    op.drop_table("log_requests")
    op.drop_table("device_config")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("config_report")
