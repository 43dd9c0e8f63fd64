"""The device list sorted by last seen: an index that delivers ``devices`` in that order.

Revision ID: 0015_device_list
Revises: 0014_capture
"""

from __future__ import annotations

from alembic import op

revision = "0015_device_list"
down_revision = "0014_capture"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Keyset paging by (last_seen, device_id): each page is an index range, not a sort of the fleet.
    op.create_index("ix_devices_last_seen", "devices", ["last_seen", "device_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_devices_last_seen", table_name="devices")
