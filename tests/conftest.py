"""Test fixtures: a real Postgres and a real Redis, never mocks.

The run gets a fresh database, migrated with Alembic. Each test runs inside a
transaction that is rolled back afterwards (the app's own commits become
savepoints), and the tests' own Redis database (TEST_REDIS_DB, never the one
REDIS_URL names, which may be a dev stack's) is flushed after each test.

Settings come from the environment, as in production (docker-compose.test.yml
sets them for `make test`); the run's own database replaces the one named there.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import pytest
from alembic.config import Config
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from redis.asyncio import Redis
from sqlalchemy import Connection, make_url, pool, text
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from alembic import command
from app.core.config import Settings, load_settings
from app.core.db import ReadOnlySession, create_engine
from app.core.state import AppState
from scripts.dev_issuer import scopes_in
from tests.issuer import AUDIENCE, Issuer

ROOT = Path(__file__).resolve().parent.parent

# Ports on this machine where nothing listens: "the dependency is down".
UNREACHABLE_POSTGRES = "postgresql://nobody:nothing@127.0.0.1:1/none"
UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"
# The tests empty this Redis database after each test; nothing else should use it.
TEST_REDIS_DB = 15
# The run's Redis timeouts: long enough for a loaded machine, short enough that a test
# that hangs on Redis fails in seconds.
REDIS_TIMEOUT_SECONDS = 5.0


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's config for programmatic runs, on `connection` if one is given."""
    config = Config(ROOT / "alembic.ini")
    config.attributes["configure_logger"] = False  # keep the app's logging setup
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def upgrade_to_head(connection: Connection) -> None:
    command.upgrade(alembic_config(connection), "head")


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
async def admin_engine(base_settings: Settings) -> AsyncIterator[AsyncEngine]:
    """On the server's maintenance database, to create and drop test databases."""
    url = make_url(base_settings.sqlalchemy_url).set(database="postgres")
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT", poolclass=pool.NullPool)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def make_database(admin_engine: AsyncEngine, base_settings: Settings) -> DatabaseMaker:
    return DatabaseMaker(admin_engine, base_settings)


class DatabaseMaker:
    """Creates empty databases named test_<random> and drops them all at the end."""

    def __init__(self, admin: AsyncEngine, settings: Settings) -> None:
        self._admin = admin
        self._settings = settings
        self._names: list[str] = []

    async def create(self) -> str:
        """A new empty database; returns its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        async with self._admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        self._names.append(name)
        url = make_url(self._settings.sqlalchemy_url).set(database=name)
        return url.render_as_string(hide_password=False)

    async def drop_all(self) -> None:
        async with self._admin.connect() as connection:
            for name in self._names:
                await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def issuer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Issuer]:
    """The run's identity provider: a real process serving real keys (tests/issuer.py)."""
    issuer = Issuer(tmp_path_factory.mktemp("issuer-keys"))
    issuer.start()
    yield issuer
    issuer.stop()


@pytest.fixture(scope="session")
async def settings(
    make_database: DatabaseMaker, base_settings: Settings, issuer: Issuer
) -> AsyncIterator[Settings]:
    """The run's settings, on a fresh database migrated to head with Alembic, trusting
    the run's issuer."""
    url = await make_database.create()
    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.begin() as connection:
        await connection.run_sync(upgrade_to_head)
    await engine.dispose()
    redis_url = urlsplit(str(base_settings.redis_url))._replace(path=f"/{TEST_REDIS_DB}")
    yield with_overrides(
        base_settings,
        database_url=url,
        redis_url=redis_url.geturl(),
        # The app's Redis timeouts are a LAN's few milliseconds: on a busy test machine a
        # live Redis misses them now and then, and a cache fill or a rate limit is skipped.
        # A test of a silent Redis sets the short timeout it needs (tests/core/test_redis.py).
        redis_socket_timeout=REDIS_TIMEOUT_SECONDS,
        redis_connect_timeout=REDIS_TIMEOUT_SECONDS,
        environment="test",
        auth_issuer=issuer.url,
        auth_audience=AUDIENCE,
    )
    await make_database.drop_all()


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for `condition()` to hold (polled); fail after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {seconds} s")
        await asyncio.sleep(0.01)


def with_overrides(settings: Settings, **changes: object) -> Settings:
    """A validated copy of `settings` with some values changed."""
    return Settings(_env_file=None, **(settings.model_dump() | changes))


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(settings)
    yield engine
    await engine.dispose()


@pytest.fixture
async def connection(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that is rolled back when the test ends."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        yield connection
        await transaction.rollback()


@pytest.fixture
def session_factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    # The app's commits release a savepoint instead; the outer transaction is rolled back.
    return async_sessionmaker(
        connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
    )


@pytest.fixture
def read_session_factory(connection: AsyncConnection) -> async_sessionmaker[AsyncSession]:
    """ReadSessionDep's sessions, read-only as in the app, but inside the test's
    transaction (to see what the test wrote), so not in AUTOCOMMIT: tests/core/test_db.py
    checks that on connections of its own."""
    return async_sessionmaker(
        connection,
        expire_on_commit=False,
        join_transaction_mode="create_savepoint",
        sync_session_class=ReadOnlySession,
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    """The tests' Redis database, emptied after each test. A plain client: the app's
    timeouts are tuned for a LAN, not for a loaded test machine."""
    client = Redis.from_url(str(settings.redis_url))
    yield client
    await client.flushdb()
    await client.aclose()


async def start_app(
    app: FastAPI, address: str = "127.0.0.1"
) -> tuple[LifespanManager, AsyncClient]:
    manager = LifespanManager(app)
    await manager.__aenter__()
    # raise_app_exceptions=False: see the 500 response, as a client would.
    transport = ASGITransport(app=manager.app, raise_app_exceptions=False, client=(address, 123))
    return manager, AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def make_client(
    session_factory: async_sessionmaker[AsyncSession],
    read_session_factory: async_sessionmaker[AsyncSession],
    redis: Redis,
    issuer: Issuer,
) -> AsyncIterator[AppClientMaker]:
    """Builds apps on given settings; each runs its real lifespan and shares the
    test's transaction, so what one test writes is gone for the next. Each client
    sends a bearer token from the run's issuer, with every scope unless told:

        client = await make_client(settings)

        reader = await make_client(settings, scopes="items:read", sub="bob")
        anonymous = await make_client(settings, scopes=None)
    """
    maker = AppClientMaker(session_factory, read_session_factory, issuer)
    yield maker
    await maker.close_all()


EVERY_SCOPE = "<every scope the app's routes require>"


def declared_scopes(app: FastAPI) -> str:
    """The scopes the app's operations require, from its OpenAPI document: those of a
    `make token` that names none."""
    return scopes_in(app.openapi())


class AppClientMaker:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        read_session_factory: async_sessionmaker[AsyncSession],
        issuer: Issuer,
    ) -> None:
        self._session_factory = session_factory
        self._read_session_factory = read_session_factory
        self._issuer = issuer
        self._open: list[tuple[LifespanManager, AsyncClient]] = []

    async def __call__(
        self,
        settings: Settings,
        app: FastAPI | None = None,
        *,
        isolated: bool = True,
        scopes: str | None = EVERY_SCOPE,
        sub: str = "alice",
        address: str = "127.0.0.1",
    ) -> AsyncClient:
        """A client on `app` (default: the service's own app on `settings`), as `sub`
        holding `scopes`: by default every scope a route of the app requires (none of
        the `<resource>:admin` ones), None for no credentials at all; from `address`.
        isolated=False: the app uses its own engine from `settings`, not the test's
        transaction (for tests where that database is unreachable)."""
        if app is None:
            # Imported here: core's tests build their own app and must not need the
            # domain packages that app.main wires in.
            from app.main import create_app  # noqa: PLC0415

            app = create_app(settings)
        if isolated:
            self._share_test_transaction(app)
        manager, client = await start_app(app, address)
        if scopes is not None:
            held = declared_scopes(app) if scopes == EVERY_SCOPE else scopes
            # Valid for the whole run, however slow the machine.
            token = self._issuer.token(held, sub=sub, exp=int(time.time()) + 3600)
            client.headers["Authorization"] = f"Bearer {token}"
        self._open.append((manager, client))
        return client

    def _share_test_transaction(self, app: FastAPI) -> None:
        """The app's own lifespan, with the test's session factories in its state in
        place of the engine's: every dependency and provider that reads the state
        (SessionDep, ReadSessionDep, a ModelCache's misses) joins the test's transaction."""
        own_lifespan = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(app: FastAPI) -> AsyncIterator[AppState]:
            async with own_lifespan(app) as state:
                yield {
                    **cast("AppState", state),
                    "session_factory": self._session_factory,
                    "read_session_factory": self._read_session_factory,
                }

        app.router.lifespan_context = lifespan

    async def close_all(self) -> None:
        for manager, client in reversed(self._open):
            await client.aclose()
            await manager.__aexit__(None, None, None)


@pytest.fixture
async def client(make_client: AppClientMaker, settings: Settings) -> AsyncClient:
    """A client on the app as configured for the run."""
    return await make_client(settings)
