"""Data capture for retraining: captured samples, per-store drop counts, capture policies.

Revision ID: 0014_capture
Revises: 0013_input_drift
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_capture"
down_revision = "0013_input_drift"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "capture_samples",
        sa.Column("id", Id, autoincrement=True, nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=16), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("raw", sa.Boolean(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("uid", name="uq_capture_samples_uid"),
    )
    op.create_index(
        "ix_capture_samples_model", "capture_samples", ["model_name", "model_version", "id"], unique=False
    )
    op.create_table(
        "capture_drops",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("stream", sa.String(length=32), nullable=False),
        sa.Column("dropped", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "stream"),
    )
    op.create_table(
        "capture_policies",
        sa.Column("target", sa.String(length=80), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("target"),
    )


def downgrade() -> None:
    op.drop_table("capture_policies")
    op.drop_table("capture_drops")
    op.drop_index("ix_capture_samples_model", table_name="capture_samples")
    op.drop_table("capture_samples")
