"""ReadSessionDep (app/core/db.py): no transaction around its statements, the pool's
connections left as they were found, writes refused, a timed-out connection dropped
(SessionDep's too). Its 503s are checked with SessionDep's in test_db.py."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import cast

import pytest
from sqlalchemy import Executable, delete, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import (
    ReadOnlySessionError,
    create_engine,
    create_read_session_factory,
    create_session_factory,
    get_read_session,
    get_session,
)
from tests.conftest import with_overrides
from tests.core.conftest import Widget


@pytest.fixture
async def one_connection_engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine whose pool holds a single connection, so each session reuses it."""
    engine = create_engine(with_overrides(settings, db_pool_size=1))
    yield engine
    await engine.dispose()


async def in_one_transaction(session: AsyncSession) -> bool:
    """Whether two statements, 10 ms apart, ran in the same transaction: its start
    time, transaction_timestamp(), is the same for both only then."""
    first = await session.scalar(text("SELECT transaction_timestamp()"))
    await session.execute(text("SELECT pg_sleep(0.01)"))
    second = await session.scalar(text("SELECT transaction_timestamp()"))
    return bool(first == second)


async def test_a_read_session_sends_no_begin(engine: AsyncEngine) -> None:
    async with create_session_factory(engine)() as session:
        assert await in_one_transaction(session)  # the check can tell
    async with create_read_session_factory(engine)() as session:
        assert not await in_one_transaction(session)


async def test_its_connection_goes_back_to_the_pool_as_it_was(
    one_connection_engine: AsyncEngine,
) -> None:
    """AUTOCOMMIT is the read session's alone: the next session on the same pooled
    connection has its transaction again."""
    backend = text("SELECT pg_backend_pid()")
    async with create_read_session_factory(one_connection_engine)() as session:
        reader = await session.scalar(backend)
    async with create_session_factory(one_connection_engine)() as session:
        assert await session.scalar(backend) == reader
        assert await in_one_transaction(session)


WRITES: list[Executable] = [
    insert(Widget).values(name="new"),
    update(Widget).values(name="renamed"),
    delete(Widget),
]


@pytest.mark.parametrize("statement", WRITES, ids=["insert", "update", "delete"])
async def test_writing_statements_are_refused(engine: AsyncEngine, statement: Executable) -> None:
    # Refused before anything is sent: this connection has no such table.
    async with create_read_session_factory(engine)() as session:
        with pytest.raises(ReadOnlySessionError, match="SessionDep"):
            await session.execute(statement)


async def test_changes_are_never_flushed(engine: AsyncEngine) -> None:
    async with create_read_session_factory(engine)() as session:
        session.add(Widget(name="new"))
        with pytest.raises(ReadOnlySessionError):
            await session.flush()
    async with create_read_session_factory(engine)() as session:
        session.add(Widget(name="new"))
        with pytest.raises(ReadOnlySessionError):
            await session.scalars(select(Widget))  # autoflush before a query
        with pytest.raises(ReadOnlySessionError):
            await session.commit()


async def test_the_tests_read_sessions_refuse_writes_too(
    read_session_factory: async_sessionmaker[AsyncSession], widgets_table: None
) -> None:
    """The app's tests read inside their transaction, but as read-only as in production."""
    async with read_session_factory() as session:
        session.add(Widget(name="new"))
        with pytest.raises(ReadOnlySessionError):
            await session.flush()


SessionDependency = Callable[[async_sessionmaker[AsyncSession]], AsyncIterator[AsyncSession]]


async def backend_of_a_request(
    dependency: SessionDependency,
    factory: async_sessionmaker[AsyncSession],
    failure: BaseException | None = None,
) -> int:
    """Run a session dependency as a request would, ending in `failure` if given, and
    return the backend (the pooled connection) it used."""
    request = cast("AsyncGenerator[AsyncSession]", dependency(factory))
    session = await anext(request)
    backend = await session.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(backend, int)
    if failure is None:
        with pytest.raises(StopAsyncIteration):
            await anext(request)
    else:
        with pytest.raises(type(failure)):
            await request.athrow(failure)
    return backend


@pytest.mark.parametrize(
    ("dependency", "make_factory"),
    [
        (get_read_session, create_read_session_factory),
        (get_session, create_session_factory),  # a transaction open: no ROLLBACK either
    ],
    ids=["ReadSessionDep", "SessionDep"],
)
async def test_a_timeout_drops_the_connection_instead_of_pooling_it(
    one_connection_engine: AsyncEngine,
    dependency: SessionDependency,
    make_factory: Callable[[AsyncEngine], async_sessionmaker[AsyncSession]],
) -> None:
    factory = make_factory(one_connection_engine)
    first = await backend_of_a_request(dependency, factory)
    again = await backend_of_a_request(dependency, factory, RuntimeError("a bug"))
    assert again == first  # rolled back if need be, and pooled again
    assert await backend_of_a_request(dependency, factory, TimeoutError()) == first
    assert await backend_of_a_request(dependency, factory) != first  # a new connection
