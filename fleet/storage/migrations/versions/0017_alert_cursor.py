"""The alert loop's telemetry cursor is a row, so a new leader continues where the previous one
committed instead of at each device's newest window.

Revision ID: 0017_alert_cursor
Revises: 0016_device_tags
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017_alert_cursor"
down_revision = "0016_device_tags"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No row: the first run after the upgrade starts at each device's newest window, as a
    # restarted leader did before.
    op.create_table(
        "alert_cursor",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("window_id", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("alert_cursor")
