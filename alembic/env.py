"""Alembic environment: async (asyncpg), URL from the app's settings, one run at a time.

Two ways in:
- the `alembic` command (the `migrate` service, `make migrate`): connects with the
  URL from DATABASE_URL;
- programmatically with a connection in `config.attributes["connection"]` (the
  tests), which runs on that connection instead of opening one.
"""

from __future__ import annotations

import asyncio

from sqlalchemy import Connection, pool, text
from sqlalchemy.ext.asyncio import create_async_engine

from alembic import context
from app.core.config import SettingsError, get_settings
from app.core.db import Base, load_all_models
from app.core.logging import configure_logging

config = context.config
JOB_QUEUE_TABLE_PREFIX = "pgqueuer"

# Any two concurrent `alembic upgrade` runs queue on this lock instead of racing;
# the second finds the work done. The number is arbitrary but must never change.
MIGRATION_LOCK_KEY = 7_311_982_640_113
MIGRATION_LOCK_TIMEOUT = "5s"

if config.attributes.get("configure_logger", True):  # the tests keep their own
    # The app's logging: in production a migration's lines are JSON, like every other
    # service's, and go through the same redaction.
    try:
        settings = get_settings()
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    configure_logging(settings.log_level, settings.effective_log_format)

# Every app/<domain>/models.py, found by name: a new resource needs no line here.
load_all_models()
target_metadata = Base.metadata


def include_name(name: str | None, type_: str, _: object) -> bool:
    """Autogenerate leaves alone the job queue's tables: PgQueuer owns them (their
    migration is app/core/jobs' install one), and no model describes them."""
    return not (type_ == "table" and (name or "").startswith(JOB_QUEUE_TABLE_PREFIX))


def run_migrations_offline() -> None:
    """`alembic upgrade --sql`: print the SQL instead of running it."""
    context.configure(
        url=get_settings().sqlalchemy_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        compare_server_default=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_server_default=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        # Held until this transaction ends, and so released even if the run dies.
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        # A DDL statement waiting for a table lock makes every later query on that
        # table wait behind it: give up after a few seconds instead (and run again).
        connection.execute(text(f"SET LOCAL lock_timeout = '{MIGRATION_LOCK_TIMEOUT}'"))
        context.run_migrations()


async def run_async_migrations() -> None:
    try:
        url = get_settings().sqlalchemy_url
    except SettingsError as exc:
        raise SystemExit(str(exc)) from None
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
