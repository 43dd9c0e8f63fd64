"""Device tags one row per tag, so that the device list's tag filter reads an index.

Revision ID: 0016_device_tags
Revises: 0015_device_list
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_device_tags"
down_revision = "0015_device_list"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "device_tags",
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "tag", name="pk_device_tags"),
    )
    op.create_index("ix_device_tags_tag", "device_tags", ["tag", "device_id"], unique=False)
    # Back-filled from the JSON lists, which stay the tags responses show.
    if op.get_bind().dialect.name == "postgresql":
        each = "json_array_elements_text(m.tags) AS t(value)"
    else:
        each = "json_each(m.tags) AS t"
    op.execute(
        "INSERT INTO device_tags (device_id, tag) "
        f"SELECT DISTINCT m.device_id, t.value FROM device_meta AS m, {each}"
    )


def downgrade() -> None:
    op.drop_index("ix_device_tags_tag", table_name="device_tags")
    op.drop_table("device_tags")
