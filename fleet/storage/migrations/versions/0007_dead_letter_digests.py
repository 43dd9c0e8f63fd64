"""Dead letters: the digests of retained or resent messages, kept apart from the dead letters so a
retained message is dead-lettered once even after its dead letter expired.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dead_letter_digests",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_index("ix_dead_letter_digests_seen", "dead_letter_digests", ["seen_at"], unique=False)
    # What is already recorded is remembered: no retained message is dead-lettered a second time.
    op.execute(
        "INSERT INTO dead_letter_digests (digest, seen_at) "
        "SELECT digest, MAX(received_at) FROM dead_letters WHERE digest IS NOT NULL GROUP BY digest"
    )


def downgrade() -> None:
    op.drop_index("ix_dead_letter_digests_seen", table_name="dead_letter_digests")
    op.drop_table("dead_letter_digests")
