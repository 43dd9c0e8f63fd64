"""Rollouts, device provisioning and labels, hourly telemetry rollups, alerts, gate columns.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=True),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_alerts_open", "alerts", ["rule", "device_id", "resolved_at"], unique=False)
    op.create_table(
        "device_meta",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("group_name", sa.String(length=64), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_index("ix_device_meta_group", "device_meta", ["group_name"], unique=False)
    op.create_table(
        "rollout_devices",
        sa.Column(
            "rollout_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("had_own", sa.Boolean(), nullable=False),
        sa.Column("previous_name", sa.String(length=64), nullable=True),
        sa.Column("previous_version", sa.String(length=128), nullable=True),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    op.create_index("ix_rollout_devices_device", "rollout_devices", ["device_id"], unique=False)
    op.create_table(
        "rollouts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("wave_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("last_gates", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "telemetry_hourly",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_p50_avg", sa.Float(), nullable=True),
        sa.Column("latency_p95_avg", sa.Float(), nullable=True),
        sa.Column("latency_p95_max", sa.Float(), nullable=True),
        sa.Column("latency_p99_max", sa.Float(), nullable=True),
        sa.Column("cpu_percent_avg", sa.Float(), nullable=True),
        sa.Column("memory_used_percent_avg", sa.Float(), nullable=True),
        sa.Column("temperature_c_max", sa.Float(), nullable=True),
        sa.Column("drift_psi_avg", sa.Float(), nullable=True),
        sa.Column("low_confidence_share_avg", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "hour", "model_name", "model_version", name="uq_telemetry_hourly"),
    )
    op.add_column("telemetry", sa.Column("drift_psi", sa.Float(), nullable=True))
    op.add_column("telemetry", sa.Column("low_confidence_share", sa.Float(), nullable=True))
    op.create_index("ix_telemetry_device_window", "telemetry", ["device_id", "window_start"], unique=False)


def downgrade() -> None:

    op.drop_index("ix_telemetry_device_window", table_name="telemetry")
    op.drop_column("telemetry", "low_confidence_share")
    op.drop_column("telemetry", "drift_psi")
    op.drop_table("telemetry_hourly")
    op.drop_table("rollouts")
    op.drop_index("ix_rollout_devices_device", table_name="rollout_devices")
    op.drop_table("rollout_devices")
    op.drop_index("ix_device_meta_group", table_name="device_meta")
    op.drop_table("device_meta")
    op.drop_index("ix_alerts_open", table_name="alerts")
    op.drop_table("alerts")
