"""Dead letters: the digest of topic and payload (a redelivery is recorded once) and an index for
their retention.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("dead_letters", sa.Column("digest", sa.String(length=64), nullable=True))
    op.create_index("ix_dead_letters_digest", "dead_letters", ["digest"], unique=False)
    op.create_index("ix_dead_letters_received", "dead_letters", ["received_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_dead_letters_received", table_name="dead_letters")
    op.drop_index("ix_dead_letters_digest", table_name="dead_letters")
    op.drop_column("dead_letters", "digest")
