"""Cache deletes that could not reach Redis, kept in Postgres until it answers again.

A write deletes its cached entries after its commit. When Redis is down, paused or cut
off, that delete cannot happen, yet a paused or cut-off Redis keeps its data: once it
answers again, the entry would be served, stale, for the rest of its TTL. So the key is
kept here and deleted as soon as Redis answers (app/core/redis.py: the worker that kept
it tries every RESEND_SECONDS, and any worker whose own breaker opened sends them before
its next call). In a table, not in the worker's memory: a deploy or a restart during the
outage would forget it, and any worker that reaches Redis again sends every worker's keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

from sqlalchemy import DateTime, String, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base

# Keys sent to Redis per transaction: one DEL and one DELETE each.
BATCH = 1000


class PendingCacheDelete(Base):
    __tablename__ = "pending_cache_deletes"

    key: Mapped[str] = mapped_column(String(1024), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class PendingDeletes:
    """The table's two operations, each in a transaction of its own."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def keep(self, keys: Sequence[str]) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                insert(PendingCacheDelete).on_conflict_do_nothing(),
                [{"key": key} for key in keys],
            )

    async def send(self, delete_in_redis: Callable[[list[str]], Awaitable[None]]) -> int:
        """Delete the kept keys with `delete_in_redis`, then here; returns how many. A
        failure of `delete_in_redis` rolls its batch back: the keys stay kept. Workers
        sending at once skip each other's locked rows."""
        sent = 0
        while True:
            async with self._engine.begin() as connection:
                keys = list(
                    await connection.scalars(
                        select(PendingCacheDelete.key)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                )
                if not keys:
                    return sent
                await delete_in_redis(keys)
                await connection.execute(
                    delete(PendingCacheDelete).where(PendingCacheDelete.key.in_(keys))
                )
            sent += len(keys)
