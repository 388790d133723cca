"""Keyset pagination with an opaque cursor, for any model and a sort key of datetimes,
UUIDs, integers or strings.

A page is the next `limit` rows after the cursor in a fixed order (for example
created_at, then id to break ties). Unlike LIMIT/OFFSET, a page costs the same
however deep it is, rows inserted meanwhile never make another repeat or be skipped,
and there is no count(*) over the whole table per request. What a reader can miss is
a row whose sort key falls behind its cursor: created_at is its transaction's start,
so a transaction that commits after the reader passed that moment is not seen by it.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from sqlalchemy import Integer, Select, bindparam, tuple_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, InstrumentedAttribute

MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 20
_MAX_CURSOR_LENGTH = 512

_BIGINT = range(-(2**63), 2**63)


def _decode_datetime(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    # In UTC, so that a moment out of range (year 1 at +01:00) fails here, as a bad
    # cursor, and not in the driver, as a 500.
    return moment.astimezone(UTC) if moment.tzinfo else moment


def _decode_int(text: str) -> int:
    number = int(text)
    if number not in _BIGINT:
        raise ValueError("out of range")
    return number


# How a cursor's values (strings) are turned back into the sort columns' Python types;
# a Paginator refuses, at import, a sort column of another type.
_DECODERS: dict[type, Callable[[str], Any]] = {
    datetime: _decode_datetime,
    uuid.UUID: uuid.UUID,
    int: _decode_int,
    str: str,
}


class Page[T](BaseModel):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` to get the next page; null on the last page."
    )


class PageParams(BaseModel):
    limit: int
    cursor: str | None


async def page_params(
    limit: Annotated[
        int, Query(ge=1, le=MAX_PAGE_SIZE, description="How many items per page.")
    ] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[
        str | None,
        Query(
            max_length=_MAX_CURSOR_LENGTH,
            pattern=r"^[A-Za-z0-9_-]+$",
            description="`next_cursor` from the previous page; leave out for the first page.",
        ),
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, cursor=cursor)


PageParamsDep = Annotated[PageParams, Depends(page_params)]


def encode_cursor(values: Sequence[Any]) -> str:
    plain = json.dumps([str(value) for value in values], separators=(",", ":"))
    return base64.urlsafe_b64encode(plain.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, columns: Sequence[InstrumentedAttribute[Any]]) -> list[Any]:
    """The sort key a cursor carries, typed like `columns`; 422 if it is not one of ours."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = json.loads(base64.urlsafe_b64decode(padded))
        if not isinstance(raw, list) or len(raw) != len(columns):
            raise ValueError("wrong shape")  # one path for every bad cursor
        if not all(isinstance(value, str) for value in raw):
            raise ValueError("not ours: encode_cursor writes strings")
        return [
            _DECODERS[column.type.python_type](value)
            for column, value in zip(columns, raw, strict=True)
        ]
    except (ValueError, OverflowError, binascii.Error, UnicodeDecodeError):
        raise RequestValidationError(
            [{"type": "value_error", "loc": ("query", "cursor"), "msg": "Invalid cursor."}]
        ) from None


class Paginator[Model: DeclarativeBase]:
    """Keyset pages of one query in one order: the order's columns ascending, the last
    one unique (e.g. created_at, then the primary key to break ties).

    Made once, at import time (`ITEM_PAGES = Paginator(select(Item), (Item.created_at,
    Item.id))`): both statements it runs, the first page and the pages after a cursor,
    are built here with bound parameters, so a request only binds values. SQLAlchemy
    then finds each statement's SQL in its cache without first walking a new statement
    to compute the cache key.
    Filters take a `bindparam` too, whose value `page()` is given by name."""

    def __init__(
        self, statement: Select[Model], order_by: Sequence[InstrumentedAttribute[Any]]
    ) -> None:
        for column in order_by:
            if column.type.python_type not in _DECODERS:
                # Here, at import, not as "Invalid cursor." on every next page.
                raise TypeError(f"a cursor cannot carry {column}: not one of {list(_DECODERS)}")
        self.order_by = tuple(order_by)
        self._after_names = [f"_after_{n}" for n in range(len(self.order_by))]
        limit = bindparam("_limit", type_=Integer)
        after = tuple_(
            *(
                bindparam(name, type_=column.type)
                for name, column in zip(self._after_names, self.order_by, strict=True)
            )
        )
        self._first = statement.order_by(*self.order_by).limit(limit)
        self._next = statement.where(tuple_(*self.order_by) > after)
        self._next = self._next.order_by(*self.order_by).limit(limit)

    async def page(
        self, session: AsyncSession, params: PageParams, **values: Any
    ) -> tuple[list[Model], str | None]:
        """One page of rows, and the cursor of the next page (None on the last one).
        `values` are the statement's own bound parameters, if it has any."""
        statement = self._first
        if params.cursor is not None:
            statement = self._next
            after = decode_cursor(params.cursor, self.order_by)
            values.update(zip(self._after_names, after, strict=True))
        # One row more than asked: it says whether there is a next page.
        values["_limit"] = params.limit + 1
        rows = list(await session.scalars(statement, values))
        if len(rows) <= params.limit:
            return rows, None
        rows = rows[: params.limit]
        last = rows[-1]
        return rows, encode_cursor([getattr(last, column.key) for column in self.order_by])
