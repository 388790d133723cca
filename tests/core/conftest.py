"""Core's tests run on an app built from core alone, with the test-only routes and
table below: they must pass with every domain package deleted."""

from __future__ import annotations

import contextlib
import errno
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, cast

import asyncpg
import pytest
from fastapi import APIRouter, Depends, FastAPI, Response
from httpx import AsyncClient
from pydantic import BaseModel, ConfigDict
from sqlalchemy import DateTime, MetaData, String, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from app.core.application import build_app
from app.core.auth.dependencies import authenticate, requires
from app.core.config import Settings
from app.core.db import NAMING_CONVENTION, ReadSessionDep, SessionDep, driver_connection
from app.core.db_errors import UNIQUE_VIOLATION, flush_or_raise
from app.core.errors import AppError
from app.core.idempotency import IdempotentRoute, idempotent
from app.core.pagination import Page, PageParamsDep, Paginator
from app.core.principal import Principal
from app.core.problems import problem_responses
from app.core.rate_limit import rate_limit
from tests.conftest import AppClientMaker


class ProbeBase(DeclarativeBase):
    """Not the app's Base: Alembic never sees this table; each test creates it in
    its own rolled-back transaction."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Widget(ProbeBase):
    __tablename__ = "core_test_widgets"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(50), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WidgetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str


class Teapot(AppError):
    status_code = 418


router = APIRouter(prefix="/probe", responses=problem_responses(503))


@router.get("/teapot", responses=problem_responses(418))
async def teapot() -> None:
    raise Teapot("I am a teapot.")


@router.get("/boom")
async def boom() -> None:
    raise RuntimeError("database password is swordfish")


@router.get("/missing-file")
async def missing_file() -> None:
    """An OSError that is a bug, not an unreachable dependency (as open() raises it)."""
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/no/such/secret-file")


@router.post("/echo")
async def echo(body: WidgetRead) -> WidgetRead:
    return body


@router.get("/db")
async def query_database(session: SessionDep, sql: str = "SELECT 1") -> int | None:
    """Runs the given statement: only ever reachable from these tests."""
    value = await session.scalar(text(sql))
    return value if isinstance(value, int) else None


@router.get("/read")
async def read_database(session: ReadSessionDep, sql: str = "SELECT 1") -> int | None:
    """/db through the read-only session."""
    value = await session.scalar(text(sql))
    return value if isinstance(value, int) else None


@router.get("/driver")
async def query_driver(session: SessionDep, sql: str = "SELECT 1") -> int | None:
    """/db on the session's asyncpg connection, as a job's enqueue sends its statement."""
    value = await (await driver_connection(session)).fetchval(sql)
    return value if isinstance(value, int) else None


@router.get("/driver-closed")
async def query_a_closed_driver(session: SessionDep) -> None:
    """/driver on a connection found closed between two statements (Postgres ended it,
    and asyncpg has seen the end), as a restart can leave it just before an enqueue."""
    raw = await driver_connection(session)
    raw.terminate()
    await raw.fetchval("SELECT 1")


@router.get("/after-a-swallowed-error")
async def query_after_a_swallowed_error(session: SessionDep) -> int | None:
    """A bug: a failed statement's error caught, and its aborted transaction used again."""
    with contextlib.suppress(DBAPIError):
        await session.execute(text("SELECT 1 / 0"))
    value = await session.scalar(text("SELECT 1"))
    return value if isinstance(value, int) else None


@router.post("/lose-transaction-state")
async def lose_transaction_state(session: SessionDep) -> None:
    """Leaves this request's pooled connection as a cancel that lands on BEGIN does:
    asyncpg believes a transaction is open, the server has none."""
    connection = await session.connection()
    raw = cast("asyncpg.Connection[Any]", (await connection.get_raw_connection()).driver_connection)
    await raw.transaction().start()
    await raw.execute("ROLLBACK")


@router.post("/limited", dependencies=[rate_limit("writes")])
async def limited_by_setting() -> None:
    return None


@router.post("/limited-scope", dependencies=[rate_limit("probe", per_minute=2)])
async def limited_by_scope() -> None:
    return None


@router.post("/limited-caller", dependencies=[Depends(authenticate), rate_limit("writes")])
async def limited_per_caller() -> None:
    """/limited behind authentication: counted per principal, not per address."""


WIDGET_PAGES = Paginator(select(Widget), (Widget.created_at, Widget.id))


@router.get("/widgets")
async def list_widgets(session: SessionDep, page: PageParamsDep) -> Page[WidgetRead]:
    rows, cursor = await WIDGET_PAGES.page(session, page)
    return Page(items=[WidgetRead.model_validate(row) for row in rows], next_cursor=cursor)


class WidgetNameTaken(AppError):
    status_code = 409


idempotent_router = APIRouter(prefix="/probe", route_class=IdempotentRoute)


@idempotent_router.post("/keyed-widgets", status_code=201, dependencies=[idempotent])
async def create_widget(
    body: WidgetRead,
    session: SessionDep,
    response: Response,
    fail: bool = False,
    fresh: bool = False,
) -> WidgetRead:
    """Writes a widget; `fail` raises after the write, so the transaction rolls back.
    `fresh` writes a new one each time (its own id and name), as a create without a
    unique field does: a retry's handler then succeeds again."""
    widget = (
        Widget(id=uuid.uuid4(), name=f"{body.name}-{uuid.uuid4().hex[:8]}")
        if fresh
        else Widget(id=body.id, name=body.name)
    )
    session.add(widget)
    await flush_or_raise(session, {UNIQUE_VIOLATION: lambda: WidgetNameTaken("taken")})
    if fail:
        raise Teapot("failed after the write")
    response.headers["Location"] = f"/probe/widgets/{widget.id}"
    return WidgetRead.model_validate(widget)


# Authenticated first, as every /api/v1 router is (app/core/application.py).
@idempotent_router.post(
    "/scoped-widgets", status_code=201, dependencies=[Depends(authenticate), idempotent]
)
async def create_scoped_widget(
    body: WidgetRead,
    session: SessionDep,
    response: Response,
    _: Annotated[Principal, requires("widgets:write")],
) -> WidgetRead:
    """keyed-widgets with a scope, checked as a parameter: after `idempotent` (a route
    that needs the principal itself, as an order's owner, checks it there)."""
    return await create_widget(body, session, response)


def build_core_app(settings: Settings) -> FastAPI:
    return build_app(settings, routers=[router, idempotent_router], title="core tests", version="0")


CoreClientMaker = Callable[..., Awaitable[AsyncClient]]


@pytest.fixture
async def widgets_table(connection: AsyncConnection) -> None:
    await connection.run_sync(ProbeBase.metadata.create_all)


@pytest.fixture
def make_core_client(make_client: AppClientMaker) -> CoreClientMaker:
    """make_core_client(settings, isolated=True, scopes=…, sub=…): a client on a
    core-only app (as make_client's)."""

    async def make(settings: Settings, *, isolated: bool = True, **who: Any) -> AsyncClient:
        return await make_client(settings, build_core_app(settings), isolated=isolated, **who)

    return make


@pytest.fixture
async def core_client(make_core_client: CoreClientMaker, settings: Settings) -> AsyncClient:
    return await make_core_client(settings)
