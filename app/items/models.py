"""The items table."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base

NAME_MAX_LENGTH = 200


class Item(Base):
    __tablename__ = "items"
    # Pages are read in (created_at, id) order: with both columns in the index, a page
    # is a range scan that stops after `limit` rows, with no sort.
    __table_args__ = (Index("ix_items_created_at_id", "created_at", "id"),)
    # Fetch server-set values (timestamps) with RETURNING on INSERT and UPDATE, so
    # they are loaded without a lazy load, which async sessions cannot do.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012  # SQLAlchemy's declared type

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(NAME_MAX_LENGTH), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
