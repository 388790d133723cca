"""create pending_cache_deletes

Cache deletes that could not reach Redis, kept until it answers again
(app/core/pending_deletes.py).

Revision ID: c4e7a2f9b815
Revises: 8a5f3d9c1e27
Create Date: 2026-12-06 21:00:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "c4e7a2f9b815"
down_revision: str | Sequence[str] | None = "8a5f3d9c1e27"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pending_cache_deletes",
        sa.Column("key", sa.String(length=1024), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_pending_cache_deletes")),
    )


def downgrade() -> None:
    op.drop_table("pending_cache_deletes")
