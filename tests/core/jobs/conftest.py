"""Jobs tests commit (a worker only sees committed jobs): each uses job names of its
own and deletes its rows afterwards."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


@pytest.fixture
async def job_name(engine: AsyncEngine) -> AsyncIterator[str]:
    """A job name of this test's own; its rows are deleted when the test ends."""
    name = f"probe_{uuid.uuid4().hex[:8]}"
    yield name
    async with engine.begin() as connection:
        await connection.execute(text("DELETE FROM pgqueuer WHERE entrypoint = :n"), {"n": name})
        await connection.execute(
            text("DELETE FROM pgqueuer_log WHERE entrypoint = :n"), {"n": name}
        )


async def last_error(engine: AsyncEngine, name: str) -> str | None:
    """The newest error PgQueuer's log keeps for the jobs named `name`."""
    async with engine.connect() as connection:
        error: str | None = await connection.scalar(
            text(
                "SELECT traceback->>'exception_message' FROM pgqueuer_log"
                " WHERE entrypoint = :n AND traceback IS NOT NULL ORDER BY id DESC LIMIT 1"
            ),
            {"n": name},
        )
    return error
