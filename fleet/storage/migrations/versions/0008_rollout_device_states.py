"""Rollouts: a state per targeted device and a deadline; devices: what is served and what is committed.

``devices.model_*`` keep meaning "serving now" (status at activation, telemetry windows); the new
``committed_*`` columns follow the agent's commit. Each is stamped with the device-clock time of the
message that set it, so a late (outbox) or re-delivered (retained) message cannot turn it back.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("serving_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("devices", sa.Column("committed_name", sa.String(length=64), nullable=True))
    op.add_column("devices", sa.Column("committed_version", sa.String(length=128), nullable=True))
    op.add_column("devices", sa.Column("committed_sha256", sa.String(length=64), nullable=True))
    op.add_column("devices", sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True))
    # Before this revision the model column was written at commit (and by status): the best guess.
    op.execute(
        "UPDATE devices SET committed_name = model_name, committed_version = model_version, "
        "committed_sha256 = model_sha256"
    )
    op.add_column(
        "rollout_devices",
        sa.Column("state", sa.String(length=24), nullable=False, server_default="pending"),
    )
    op.add_column("rollout_devices", sa.Column("state_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rollout_devices", sa.Column("detail", sa.Text(), nullable=True))
    # Assigned devices of older rollouts: installing; the controller settles them on its next tick.
    op.execute("UPDATE rollout_devices SET state = 'installing' WHERE assigned_at IS NOT NULL")
    op.add_column("rollouts", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rollouts", sa.Column("passed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("rollouts", "passed_at")
    op.drop_column("rollouts", "deadline_at")
    op.drop_column("rollout_devices", "detail")
    op.drop_column("rollout_devices", "state_at")
    op.drop_column("rollout_devices", "state")
    for column in ("committed_at", "committed_sha256", "committed_version", "committed_name", "serving_at"):
        op.drop_column("devices", column)
