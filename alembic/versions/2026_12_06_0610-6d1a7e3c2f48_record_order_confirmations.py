"""record order confirmations

When the confirm_order job ran for an order (app/orders/jobs.py).

Revision ID: 6d1a7e3c2f48
Revises: 3b8f5c1e9d20
Create Date: 2026-12-06 06:10:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "6d1a7e3c2f48"
down_revision: str | Sequence[str] | None = "3b8f5c1e9d20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("orders", "confirmed_at")
