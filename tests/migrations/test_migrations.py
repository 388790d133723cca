"""Migrations: up, down and up again work, the models match them, and two runs
started together are safe."""

from __future__ import annotations

import asyncio
import os
import sys

from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, pool, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from alembic import command
from app.core.db import Base, load_all_models
from tests.conftest import ROOT, DatabaseMaker, alembic_config


def table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def fresh_engine(make_database: DatabaseMaker) -> AsyncEngine:
    return create_async_engine(await make_database.create(), poolclass=pool.NullPool)


def test_the_migrations_form_one_line() -> None:
    """Two heads (a fork's migration and the template's, both after one revision) make
    `alembic upgrade head` refuse to run: say how to join them."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    assert len(heads) == 1, (
        f"alembic/versions has {len(heads)} heads ({', '.join(heads)}): join them with an "
        "empty migration after both (`make update` does, run again; or `alembic merge heads`)"
    )


async def test_upgrade_downgrade_upgrade(make_database: DatabaseMaker) -> None:
    """Every migration's downgrade runs, a fork's own and `make resource`'s included."""
    load_all_models()
    models = set(Base.metadata.tables)
    engine = await fresh_engine(make_database)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
            assert models <= await connection.run_sync(table_names)
            await connection.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
            assert await connection.run_sync(table_names) == {"alembic_version"}
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
            assert models <= await connection.run_sync(table_names)
    finally:
        await engine.dispose()


async def test_models_match_migrations(make_database: DatabaseMaker) -> None:
    """`alembic check`: autogenerate finds nothing to add after upgrading to head."""
    engine = await fresh_engine(make_database)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(lambda c: command.upgrade(alembic_config(c), "head"))
            await connection.run_sync(lambda c: command.check(alembic_config(c)))
    finally:
        await engine.dispose()


async def test_concurrent_upgrades_are_serialised(make_database: DatabaseMaker) -> None:
    """Two `alembic upgrade head` processes at once, as two `migrate` containers would."""
    url = await make_database.create()
    env = {**os.environ, "DATABASE_URL": url}
    runs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "alembic",
            "upgrade",
            "head",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.gather(*(run.communicate() for run in runs))
    for run, (output, _) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output.decode()
    # Exactly one of them did the work; the other found it done.
    ran = [b"Running upgrade" in output for output, _ in outputs]
    assert sorted(ran) == [False, True]

    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            versions = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).all()
            assert len(versions) == 1
    finally:
        await engine.dispose()
