"""Enqueue a job on the session's own transaction: it exists if and only if the
transaction commits. A rolled-back request leaves no job; a committed one always has
its job. Redis plays no part.

    await enqueue(session, "confirm_order", {"order_id": str(order.id)},
                  dedupe_key=f"confirm_order:{order.id}")

PgQueuer inserts through the session's own asyncpg connection (`driver_connection`),
inside its transaction. A session without one (ReadSessionDep autocommits) is refused
with NoTransactionError, not committed at once.
"""

from __future__ import annotations

from typing import Any

import orjson
from pgqueuer import AsyncpgDriver, Queries
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import driver_connection


async def enqueue(
    session: AsyncSession,
    job: str,
    payload: dict[str, Any],
    *,
    dedupe_key: str | None = None,
) -> None:
    """Add `job` with its JSON `payload`, committed with the session. With a
    `dedupe_key`, a second enqueue while the first is still waiting or running is
    skipped: handlers still run at least once, so make them idempotent."""
    queries = Queries(AsyncpgDriver(await driver_connection(session)))
    await queries.enqueue(job, orjson.dumps(payload), dedupe_key=dedupe_key, on_conflict="skip")
