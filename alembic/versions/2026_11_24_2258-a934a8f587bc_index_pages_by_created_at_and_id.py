"""index pages by created_at and id

Pages are read in (created_at, id) order (app/core/pagination.py). With created_at
alone in the index, Postgres sorts each page again by id (an Incremental Sort);
with both, a page is an index range scan that stops after `limit` rows. An item's
orders get (item_id, created_at, id), which also serves the foreign key's check
when an item is deleted, so the index on item_id alone goes too.

CREATE INDEX blocks writes to the table while it builds: nothing on a small table.
On a large one, run the three CREATE INDEX CONCURRENTLY statements by hand first;
this migration then finds them (if_not_exists) and only drops the old indexes.

Revision ID: a934a8f587bc
Revises: 4f3c2a1d9e70
Create Date: 2026-11-24 22:58:57.874518+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a934a8f587bc"
down_revision: str | Sequence[str] | None = "4f3c2a1d9e70"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The new indexes first: no moment without one.
    op.create_index(
        op.f("ix_items_created_at_id"), "items", ["created_at", "id"], if_not_exists=True
    )
    op.create_index(
        op.f("ix_orders_created_at_id"), "orders", ["created_at", "id"], if_not_exists=True
    )
    op.create_index(
        op.f("ix_orders_item_id_created_at_id"),
        "orders",
        ["item_id", "created_at", "id"],
        if_not_exists=True,
    )
    op.drop_index(op.f("ix_items_created_at"), table_name="items")
    op.drop_index(op.f("ix_orders_created_at"), table_name="orders")
    op.drop_index(op.f("ix_orders_item_id"), table_name="orders")


def downgrade() -> None:
    op.create_index(op.f("ix_orders_item_id"), "orders", ["item_id"])
    op.create_index(op.f("ix_orders_created_at"), "orders", ["created_at"])
    op.create_index(op.f("ix_items_created_at"), "items", ["created_at"])
    op.drop_index(op.f("ix_orders_item_id_created_at_id"), table_name="orders")
    op.drop_index(op.f("ix_orders_created_at_id"), table_name="orders")
    op.drop_index(op.f("ix_items_created_at_id"), table_name="items")
