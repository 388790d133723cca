"""The orders table: each order refers to one item and records who placed it."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, DateTime, ForeignKey, Index, String, func
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.core.db import Base
from app.items.models import Item


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # Pages are read in (created_at, id) order, of all orders or of one item's: each
        # a range scan that stops after `limit` rows. The second also finds an item's
        # orders for the foreign key's check when the item is deleted.
        Index("ix_orders_created_at_id", "created_at", "id"),
        Index("ix_orders_item_id_created_at_id", "item_id", "created_at", "id"),
        # A principal's own orders, in page order.
        Index("ix_orders_owner_created_at_id", "owner", "created_at", "id"),
    )
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  # SQLAlchemy's declared type

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    # RESTRICT: an item with orders cannot be deleted (the items service says 409).
    item_id: Mapped[uuid.UUID] = mapped_column(ForeignKey(Item.id, ondelete="RESTRICT"))
    quantity: Mapped[int]
    # The subject of the principal that placed it: only it (or an orders:admin) sees it.
    owner: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # Set by the confirm_order job (app/orders/jobs.py), after the order is committed.
    confirmed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # lazy="raise": async sessions cannot lazy-load, so every query says what it loads
    # (joinedload below), which also makes an N+1 impossible to write by accident.
    item: Mapped[Item] = relationship(lazy="raise")


# The constraint a missing item violates; named by the naming convention in core/db.py.
ITEM_FOREIGN_KEY = "fk_orders_item_id_items"
