"""Core's own periodic job: every night, drop what only grows. Finished jobs' log
rows older than JOBS_RETENTION_DAYS, and Idempotency-Keys past their TTL. Failed jobs
stay, with their log rows (what they died of), until someone retries them.

The keys and the job log are deleted in batches, each a transaction of its own,
committed before the next: a deleted row's lock (which a request reusing an expired key
waits for) lasts one batch, not the run, and a run cut short (its time limit, a killed
worker) keeps what its batches committed. Within a time budget under JOBS_TIMEOUT: a
night with more rows than fit in one run leaves the rest to the next run (logged),
instead of timing out with more to do the next night."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import structlog
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.idempotency import EXPIRED_KEYS
from app.core.jobs.worker import Jobs

NIGHTLY = "15 3 * * *"  # 03:15 UTC: away from the hour, when other crons pile up
BATCH_ROWS = 10_000
# The share of JOBS_TIMEOUT the deletions may start batches in: the rest is for the
# batch running when it ends, and its commit.
BUDGET_SHARE = 0.5
# A request judges a key's expiry by its own transaction's now(), which for one in
# flight when the run starts is earlier than the run's: keys are deleted only once
# expired this much longer (far more than a request's transaction lasts), so that none
# a request still sees as live disappears under it (its retry would run again instead
# of being replayed).
KEY_GRACE = timedelta(hours=1)

# A job still in the queue (failed, or waiting to retry) keeps its history: `make jobs`
# shows the error a failed job died of from these rows. Oldest first, on the log's
# `created` index.
OLD_LOG_ROWS = text("""
DELETE FROM pgqueuer_log WHERE id IN (
    SELECT id FROM pgqueuer_log
    WHERE created < :cutoff
      AND NOT EXISTS (SELECT FROM pgqueuer WHERE pgqueuer.id = pgqueuer_log.job_id)
    ORDER BY created
    LIMIT :batch)
""")
OLD_STATISTICS = text("DELETE FROM pgqueuer_statistics WHERE created < :cutoff")


logger = structlog.get_logger(__name__)


async def delete_in_batches(
    sessions: async_sessionmaker[AsyncSession],
    statement: TextClause,
    cutoff: datetime,
    deadline: float,
) -> tuple[int, bool]:
    """Run `statement` (a DELETE of at most :batch rows older than :cutoff), each time in
    a transaction of its own committed before the next, until it deletes fewer than a
    batch, or `deadline` (time.monotonic()) passes; how many rows it deleted, and whether
    it finished."""
    deleted = 0
    while True:
        async with sessions() as session, session.begin():
            result = await session.execute(statement, {"cutoff": cutoff, "batch": BATCH_ROWS})
        batch = int(getattr(result, "rowcount", 0) or 0)
        deleted += batch
        if batch < BATCH_ROWS:
            return deleted, True
        if time.monotonic() >= deadline:
            return deleted, False


def register_cleanup(jobs: Jobs, settings: Settings) -> None:
    @jobs.every_with_sessions("cleanup", NIGHTLY)
    async def cleanup(sessions: async_sessionmaker[AsyncSession]) -> None:
        deadline = time.monotonic() + settings.jobs_timeout * BUDGET_SHARE
        # The database's clock, which stamps the keys' created_at and checks their expiry
        # on every keyed request: a worker whose clock runs ahead must not delete live keys.
        async with sessions() as session:
            now: datetime = await session.scalar(text("SELECT now()"))
        # Keys first: a table every keyed write adds to.
        key_cutoff = now - timedelta(seconds=settings.idempotency_key_ttl_seconds) - KEY_GRACE
        keys, finished = await delete_in_batches(sessions, EXPIRED_KEYS, key_cutoff, deadline)
        cutoff = now - timedelta(days=settings.jobs_retention_days)
        async with sessions() as session, session.begin():
            await session.execute(OLD_STATISTICS, {"cutoff": cutoff})  # one row a minute a job
        rows = 0
        if finished:
            rows, finished = await delete_in_batches(sessions, OLD_LOG_ROWS, cutoff, deadline)
        if finished:
            logger.info("cleanup done", job_log_rows=rows, idempotency_keys=keys)
        else:
            logger.warning(
                "cleanup stopped at its time budget: older rows are left for the next run "
                "(if this repeats, run the cleanup more often than nightly)",
                job_log_rows=rows,
                idempotency_keys=keys,
            )
