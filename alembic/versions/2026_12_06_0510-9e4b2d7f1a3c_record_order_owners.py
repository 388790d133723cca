"""record order owners

Each order records the subject of the principal that placed it (app/orders/service.py).
Orders placed before authentication belong to no one: only an orders:admin sees them.

Revision ID: 9e4b2d7f1a3c
Revises: 7c1f9e2a4b6d
Create Date: 2026-12-06 05:10:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "9e4b2d7f1a3c"
down_revision: str | Sequence[str] | None = "7c1f9e2a4b6d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The default fills the existing rows, then goes: every new order names its owner.
    op.add_column(
        "orders",
        sa.Column("owner", sa.String(length=255), server_default="", nullable=False),
    )
    op.alter_column("orders", "owner", server_default=None)
    op.create_index(
        op.f("ix_orders_owner_created_at_id"), "orders", ["owner", "created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_orders_owner_created_at_id"), table_name="orders")
    op.drop_column("orders", "owner")
