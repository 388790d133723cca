"""The orders API's request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

MAX_QUANTITY = 10_000


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: uuid.UUID
    quantity: int = Field(ge=1, le=MAX_QUANTITY)


class OrderedItem(BaseModel):
    """The part of the item an order shows, loaded in the same query."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str


class OrderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    quantity: int
    created_at: datetime
    confirmed_at: datetime | None = Field(
        description="When the background confirmation ran; null until then."
    )
    owner: str = Field(description="The subject of the principal that placed the order.")
    item: OrderedItem
