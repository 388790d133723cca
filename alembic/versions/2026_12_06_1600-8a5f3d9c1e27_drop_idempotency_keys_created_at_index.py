"""drop idempotency_keys' created_at index

Every keyed write paid an entry in it, and the one query it could serve, the nightly
cleanup, deletes about half the table, which Postgres does with a sequential scan.

Revision ID: 8a5f3d9c1e27
Revises: 6d1a7e3c2f48
Create Date: 2026-12-06 16:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "8a5f3d9c1e27"
down_revision: str | Sequence[str] | None = "6d1a7e3c2f48"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_created_at"), table_name="idempotency_keys")


def downgrade() -> None:
    op.create_index(
        op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], unique=False
    )
