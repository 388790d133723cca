"""The items API's request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic.json_schema import SkipJsonSchema

from app.core.text import multi_line, single_line
from app.items.models import NAME_MAX_LENGTH

ItemName = Annotated[str, single_line(max_length=NAME_MAX_LENGTH)]
ItemDescription = Annotated[str, multi_line(max_length=10_000)]


class ItemCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: ItemName
    description: ItemDescription | None = None


class ItemUpdate(BaseModel):
    """A partial update: only the fields sent are changed; `description: null` clears it."""

    model_config = ConfigDict(extra="forbid")

    # SkipJsonSchema: the schema says what the API accepts, a string; null is refused.
    name: ItemName | SkipJsonSchema[None] = None
    description: ItemDescription | None = None

    # Each field whose column is NOT NULL: a new one goes in this list too.
    @field_validator("name")
    @classmethod
    def _not_null(cls, value: object, info: ValidationInfo) -> object:
        # Runs only when the field is sent: leaving it out is fine, sending null is not.
        if value is None:
            raise ValueError(f"{info.field_name} cannot be null; leave it out to keep it as is")
        return value


class ItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    description: str | None
    created_at: datetime
    updated_at: datetime
