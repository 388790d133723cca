"""Keyset pagination: every row exactly once, in order, whatever the page size."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from httpx import AsyncClient
from sqlalchemy import Numeric, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from app.core.pagination import Paginator, encode_cursor
from tests.core.conftest import ProbeBase, Widget
from tests.core.problems import assert_problem


@pytest.fixture
async def widgets(
    widgets_table: None, session_factory: async_sessionmaker[AsyncSession]
) -> list[str]:
    """Seven widgets; three share a timestamp, so only the id orders them."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    stamps = [start, start, start, *(start + timedelta(seconds=n) for n in range(1, 5))]
    async with session_factory() as session:
        rows = [Widget(name=f"w{n}", created_at=at) for n, at in enumerate(stamps)]
        session.add_all(rows)
        await session.commit()
        return [str(row.id) for row in sorted(rows, key=lambda r: (r.created_at, r.id))]


@pytest.mark.parametrize("limit", [1, 2, 3, 7, 100])
async def test_pages_cover_every_row_once_in_order(
    core_client: AsyncClient, widgets: list[str], limit: int
) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        page = (await core_client.get("/probe/widgets", params=params)).json()
        assert len(page["items"]) <= limit
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == widgets


SOME_ID = "0b0e5a55-0000-4000-8000-000000000000"


def forged(values: list[object]) -> str:
    """A cursor this server never made: JSON of any values, encoded as ours are."""
    plain = json.dumps(values).encode()
    return base64.urlsafe_b64encode(plain).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "bm90IGpzb24",
        encode_cursor(["x"]),
        encode_cursor(["2026-01-01", "nope"]),
        forged(["2026-01-01T00:00:00+00:00", 5]),  # not a string: uuid.UUID(5) would raise
        forged([None, None]),
        # Valid ISO text, but before year 1 once in UTC: the driver could not send it.
        forged(["0001-01-01T00:00:00+01:00", SOME_ID]),
        forged(["9999-12-31T23:59:59-01:00", SOME_ID]),
    ],
)
async def test_a_bad_cursor_is_422(
    core_client: AsyncClient, widgets: list[str], cursor: str
) -> None:
    response = await core_client.get("/probe/widgets", params={"cursor": cursor})
    body = assert_problem(response, 422)
    assert body["errors"] == [{"location": "query", "field": "cursor", "detail": "Invalid cursor."}]


@pytest.mark.parametrize("cursor", ["not-base64!", "x" * 513])
async def test_a_cursor_of_the_wrong_form_is_422(core_client: AsyncClient, cursor: str) -> None:
    assert_problem(await core_client.get("/probe/widgets", params={"cursor": cursor}), 422)


@pytest.mark.parametrize("limit", [0, 101, "many", 10**20])
async def test_limit_is_bounded(core_client: AsyncClient, limit: str | int) -> None:
    assert_problem(await core_client.get("/probe/widgets", params={"limit": limit}), 422)


class Priced(ProbeBase):
    __tablename__ = "core_test_priced"

    id: Mapped[int] = mapped_column(primary_key=True)
    price: Mapped[float] = mapped_column(Numeric(10, 2))


def test_a_sort_column_a_cursor_cannot_carry_is_refused_at_import() -> None:
    with pytest.raises(TypeError, match="cannot carry"):
        Paginator(select(Priced), (Priced.price, Priced.id))
