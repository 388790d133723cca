"""The items API's request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.items.models import NAME_MAX_LENGTH

ItemName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=NAME_MAX_LENGTH)
]
ItemDescription = Annotated[str, StringConstraints(max_length=10_000)]

MAX_PAGE_SIZE = 100


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ItemName
    description: ItemDescription | None = None


class ItemUpdate(BaseModel):
    """A partial update: only the fields sent are changed; `description: null` clears it."""

    model_config = ConfigDict(extra="forbid")

    name: ItemName | None = None
    description: ItemDescription | None = None

    @field_validator("name")
    @classmethod
    def _name_not_null(cls, value: str | None) -> str:
        # Runs only when the field is sent: leaving it out is fine, sending null is not.
        if value is None:
            raise ValueError("name cannot be null; leave it out to keep the current name")
        return value


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime


class Page(BaseModel):
    limit: int = Field(description="The page size asked for.")
    offset: int = Field(description="How many items were skipped.")
    total: int = Field(description="How many items exist.")


class ItemPage(Page):
    items: list[ItemRead]
