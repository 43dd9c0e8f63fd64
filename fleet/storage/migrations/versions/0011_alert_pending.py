"""Alert conditions building up or clearing (hold times), so a new leader continues them.

Revision ID: 0011_alert_pending
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_alert_pending"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alert_pending",
        sa.Column("rule", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("pending_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clearing_since", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("rule", "device_id"),
    )


def downgrade() -> None:
    op.drop_table("alert_pending")
