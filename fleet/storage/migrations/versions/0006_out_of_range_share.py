"""Telemetry: the share of inputs outside the baseline's per-feature range, raw and hourly.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("telemetry", sa.Column("out_of_range_share", sa.Float(), nullable=True))
    op.add_column("telemetry_hourly", sa.Column("out_of_range_share_avg", sa.Float(), nullable=True))


def downgrade() -> None:
    op.drop_column("telemetry_hourly", "out_of_range_share_avg")
    op.drop_column("telemetry", "out_of_range_share")
