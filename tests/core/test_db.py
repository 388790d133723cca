"""Database failure semantics against a real Postgres: transient failures are 503
with Retry-After, bugs stay 500, and nothing waits without a bound, through either
session dependency."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack
from typing import cast

import asyncpg
import pytest
from httpx import AsyncClient
from sqlalchemy import event, make_url, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import after_commit, create_engine, discard
from app.core.db_errors import UNIQUE_VIOLATION, constraint_name, flush_or_raise, sqlstate
from app.core.errors import AppError
from tests.conftest import with_overrides
from tests.core.conftest import CoreClientMaker, Widget
from tests.core.problems import assert_problem

# The same probe through SessionDep, ReadSessionDep and the session's asyncpg connection
# (driver_connection, whose errors are asyncpg's own): the same failure semantics.
THROUGH_EVERY_SESSION = pytest.mark.parametrize(
    "route", ["/probe/db", "/probe/read", "/probe/driver"]
)


@THROUGH_EVERY_SESSION
async def test_statement_timeout_is_503(
    make_core_client: CoreClientMaker, settings: Settings, route: str
) -> None:
    client = await make_core_client(
        with_overrides(settings, db_statement_timeout=0.2), isolated=False
    )
    started = time.perf_counter()
    response = await client.get(route, params={"sql": "SELECT 1 FROM pg_sleep(5)"})
    assert_problem(response, 503)
    assert time.perf_counter() - started < 2


@THROUGH_EVERY_SESSION
async def test_lock_timeout_is_503_not_a_hang(
    make_core_client: CoreClientMaker, settings: Settings, engine: AsyncEngine, route: str
) -> None:
    """A row held by another transaction: the request gives up after DB_LOCK_TIMEOUT."""
    client = await make_core_client(with_overrides(settings, db_lock_timeout=0.2), isolated=False)
    async with engine.connect() as holder:
        # Committed, so that the app's own connection sees it: dropped whatever happens.
        await holder.execute(text("CREATE TABLE IF NOT EXISTS core_test_locks (id int)"))
        await holder.commit()
        try:
            await holder.execute(text("LOCK TABLE core_test_locks IN ACCESS EXCLUSIVE MODE"))
            sql = "SELECT count(*) FROM core_test_locks"
            response = await client.get(route, params={"sql": sql})
        finally:
            await holder.rollback()
            await holder.execute(text("DROP TABLE core_test_locks"))
            await holder.commit()
    assert_problem(response, 503)


@THROUGH_EVERY_SESSION
async def test_terminated_backend_is_503_then_recovers(
    make_core_client: CoreClientMaker, settings: Settings, engine: AsyncEngine, route: str
) -> None:
    """pg_terminate_backend on the app's pooled connections, as a failover or restart does."""
    client = await make_core_client(settings, isolated=False)
    assert (await client.get(route)).status_code == 200  # a pooled connection exists
    async with engine.connect() as admin:
        await admin.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state = 'idle'"
            )
        )
    # The tests' own pooled connections were idle too: start them afresh.
    await engine.dispose()
    statuses = [(await client.get(route)).status_code for _ in range(3)]
    assert 500 not in statuses
    assert statuses[0] == 503
    assert statuses[-1] == 200  # the dead connection was dropped from the pool


async def test_a_driver_connection_found_closed_is_503_then_recovers(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    """asyncpg's own "connection is closed" has no SQLSTATE, so app/core/errors.py does
    not classify it; the session's rollback then meets the closed connection, which
    SQLAlchemy counts as a disconnect: the request is a 503 (never a 500), and the
    connection is dropped, not pooled again."""
    client = await make_core_client(with_overrides(settings, db_pool_size=1), isolated=False)
    assert_problem(await client.get("/probe/driver-closed"), 503)
    statuses = [(await client.get("/probe/driver")).status_code for _ in range(2)]
    assert statuses == [200, 200]  # the dead connection was not pooled again


async def test_a_connection_that_lost_track_of_its_transaction_is_dropped(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    """A cancel that lands on BEGIN leaves asyncpg sure a transaction is open that the
    server never began: each later transaction on that connection fails (SAVEPOINT
    outside a transaction). The connection is dropped at the first failure, not pooled
    again: one 503, then a fresh connection."""
    client = await make_core_client(with_overrides(settings, db_pool_size=1), isolated=False)
    assert (await client.post("/probe/lose-transaction-state")).status_code == 200
    statuses = [(await client.get("/probe/db")).status_code for _ in range(3)]
    assert statuses == [503, 200, 200]


async def test_a_transaction_used_after_its_error_was_swallowed_is_a_500_not_an_outage(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    # 25P02 is a bug in the caller: not a 503 with Retry-After, and the connection is kept.
    client = await make_core_client(
        with_overrides(settings, db_pool_size=1, db_max_overflow=0), isolated=False
    )
    backend = {"sql": "SELECT pg_backend_pid()"}
    before = (await client.get("/probe/db", params=backend)).json()
    assert_problem(await client.get("/probe/after-a-swallowed-error"), 500)
    assert (await client.get("/probe/db", params=backend)).json() == before


@THROUGH_EVERY_SESSION
async def test_a_bug_in_sql_stays_500(core_client: AsyncClient, route: str) -> None:
    response = await core_client.get(route, params={"sql": "SELECT * FROM nowhere"})
    assert_problem(response, 500)


class NameTaken(AppError):
    status_code = 409


async def test_flush_or_raise_maps_a_named_constraint(
    session_factory: async_sessionmaker[AsyncSession], widgets_table: None
) -> None:
    async with session_factory() as session:
        session.add_all([Widget(name="same"), Widget(name="same")])
        with pytest.raises(NameTaken):
            await flush_or_raise(session, {"uq_core_test_widgets_name": lambda: NameTaken("x")})


async def test_flush_or_raise_lets_unmapped_violations_through(
    session_factory: async_sessionmaker[AsyncSession], widgets_table: None
) -> None:
    async with session_factory() as session:
        session.add_all([Widget(name="same"), Widget(name="same")])
        with pytest.raises(IntegrityError) as caught:
            await flush_or_raise(session, {"some_other_constraint": lambda: NameTaken("x")})
        assert constraint_name(caught.value) == "uq_core_test_widgets_name"
        assert sqlstate(caught.value) == UNIQUE_VIOLATION


async def test_after_commit_hooks_run_only_after_a_commit(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    from app.core.db import get_session  # noqa: PLC0415

    ran: list[str] = []

    async def hook() -> None:
        ran.append("hook")

    committed = cast("AsyncGenerator[AsyncSession]", get_session(session_factory))
    session = await anext(committed)
    after_commit(session, hook)
    assert ran == []
    with pytest.raises(StopAsyncIteration):
        await anext(committed)
    assert ran == ["hook"]

    rolled_back = cast("AsyncGenerator[AsyncSession]", get_session(session_factory))
    session = await anext(rolled_back)
    after_commit(session, hook)
    with pytest.raises(RuntimeError):
        await rolled_back.athrow(RuntimeError("the handler failed"))
    assert ran == ["hook"]


async def test_after_commit_hooks_run_when_the_commit_s_outcome_is_unknown(
    session_factory: async_sessionmaker[AsyncSession],
    widgets_table: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server committed, and the connection broke before its answer: the client gets
    an error, the row stands, and its cached copy must go all the same."""
    from app.core.db import get_session  # noqa: PLC0415

    ran: list[str] = []

    async def invalidate() -> None:
        ran.append("invalidated")

    commit = AsyncSession.commit

    async def commit_then_lose_the_answer(self: AsyncSession) -> None:
        await commit(self)
        raise ConnectionResetError("the answer to COMMIT never arrived")

    request = cast("AsyncGenerator[AsyncSession]", get_session(session_factory))
    session = await anext(request)
    session.add(Widget(name="committed"))
    after_commit(session, invalidate)
    monkeypatch.setattr(AsyncSession, "commit", commit_then_lose_the_answer)
    with pytest.raises(ConnectionResetError):
        await anext(request)
    monkeypatch.undo()
    assert ran == ["invalidated"]
    async with session_factory() as reader:
        assert list(await reader.scalars(select(Widget.name))) == ["committed"]


async def test_discard_drops_the_hooks_of_the_work_it_rolls_back(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    from app.core.db import get_session  # noqa: PLC0415

    ran: list[str] = []

    async def discarded() -> None:
        ran.append("discarded")

    async def kept() -> None:
        ran.append("kept")

    committed = cast("AsyncGenerator[AsyncSession]", get_session(session_factory))
    session = await anext(committed)
    after_commit(session, discarded)
    await discard(session)
    after_commit(session, kept)  # the session stays usable, and commits what follows
    with pytest.raises(StopAsyncIteration):
        await anext(committed)
    assert ran == ["kept"]


async def test_a_failing_after_commit_hook_leaves_the_commit_standing(
    session_factory: async_sessionmaker[AsyncSession], widgets_table: None
) -> None:
    from app.core.db import get_session  # noqa: PLC0415

    ran: list[str] = []

    async def broken() -> None:
        raise ConnectionError("the cache is gone")

    async def next_one() -> None:
        ran.append("next")

    request = cast("AsyncGenerator[AsyncSession]", get_session(session_factory))
    session = await anext(request)
    session.add(Widget(name="kept"))
    after_commit(session, broken)
    after_commit(session, next_one)
    with pytest.raises(StopAsyncIteration):  # the request ends normally
        await anext(request)
    assert ran == ["next"]  # the hooks after the failed one still run
    async with session_factory() as reader:
        names = await reader.scalars(select(Widget.name))
        assert list(names) == ["kept"]


@THROUGH_EVERY_SESSION
async def test_pool_wait_is_bounded(
    make_core_client: CoreClientMaker, settings: Settings, route: str
) -> None:
    """Every pooled connection busy: the next request is 503 after DB_POOL_TIMEOUT."""
    client = await make_core_client(
        with_overrides(settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.3),
        isolated=False,
    )
    slow = asyncio.create_task(client.get(route, params={"sql": "SELECT 1 FROM pg_sleep(1)"}))
    await asyncio.sleep(0.2)
    response = await client.get(route)
    assert_problem(response, 503)
    await slow


async def hold_at_once(engine: AsyncEngine, count: int) -> None:
    """A burst: `count` connections checked out together, then all returned."""
    async with AsyncExitStack() as stack:
        for _ in range(count):
            await stack.enter_async_context(engine.connect())


@pytest.mark.parametrize(("size", "overflow", "reopened"), [(10, 0, 0), (5, 5, 5)])
async def test_overflow_connections_are_reopened_by_every_burst(
    settings: Settings, size: int, overflow: int, reopened: int
) -> None:
    """Why the default pool has no overflow: an overflow connection is closed when it is
    returned to a full pool, so each burst opens it again (a backend fork and auth)."""
    engine = create_engine(with_overrides(settings, db_pool_size=size, db_max_overflow=overflow))
    opened: list[object] = []
    event.listen(engine.sync_engine, "connect", lambda connection, _: opened.append(connection))
    try:
        await hold_at_once(engine, size + overflow)
        assert len(opened) == size + overflow
        opened.clear()
        await hold_at_once(engine, size + overflow)
        assert len(opened) == reopened
    finally:
        await engine.dispose()


class FreezingProxy:
    """A TCP proxy to Postgres that can stop forwarding: the server as a client sees it
    when it is paused or cut off (no error, no answer)."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self.frozen = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[object]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:
            self._handlers.add(handler)
        upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        try:
            await asyncio.gather(
                self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
            )
        finally:
            writer.close()
            upstream_writer.close()

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self.frozen.is_set():
                await asyncio.Future()  # swallowed, and nothing more: silent until closed
            sink.write(data)
            await sink.drain()

    def close(self) -> None:
        for handler in self._handlers:
            handler.cancel()
        if self._server is not None:
            self._server.close()


async def test_a_silent_server_costs_a_request_the_statement_timeout_not_more(
    settings: Settings,
) -> None:
    # The client gives up DB_STATEMENT_TIMEOUT + 0.5 s after sending; the connection it
    # then throws away must not add a graceful close's wait on a server that cannot answer.
    url = make_url(settings.sqlalchemy_url)
    proxy = FreezingProxy(url.host or "localhost", url.port or 5432)
    port = await proxy.start()
    proxied = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    engine = create_engine(
        with_overrides(
            settings, database_url=proxied, db_statement_timeout=0.3, db_lock_timeout=0.2
        )
    )
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            proxy.frozen.set()
            started = time.monotonic()
            with pytest.raises((DBAPIError, TimeoutError)):  # as the app's handlers take them
                await connection.execute(text("SELECT 1"))
            waited = time.monotonic() - started
        assert waited < 1.2, f"{waited:.2f} s: 0.8 s of timeout, then a wait on the close"
    finally:
        await engine.dispose()
        proxy.close()


@pytest.mark.parametrize("tls", ["sslmode=disable", "ssl=disable"])
async def test_a_url_with_either_spelling_of_its_tls_mode_connects_both_ways(
    settings: Settings, tls: str
) -> None:
    """Providers hand out libpq URLs (`sslmode`); asyncpg's connect() takes `ssl`. The
    engine and asyncpg used directly (the worker, the near cache) both connect."""
    url = make_url(settings.sqlalchemy_url)
    configured = with_overrides(settings, database_url=f"{url.render_as_string(False)}?{tls}")
    engine = create_engine(configured)
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await engine.dispose()
    direct = await asyncpg.connect(configured.postgres_dsn)
    try:
        assert await direct.fetchval("SELECT 1") == 1
    finally:
        await direct.close()
