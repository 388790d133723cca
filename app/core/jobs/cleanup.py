"""Core's own periodic job: every night, drop what only grows. Finished jobs' log
rows older than JOBS_RETENTION_DAYS, and Idempotency-Keys past their TTL. Failed jobs
stay, with their log rows (what they died of), until someone retries them.

The keys and the job log are deleted in batches, within a time budget under
JOBS_TIMEOUT: a night with more rows than fit in one run commits what it deleted and
leaves the rest to the next run (logged), instead of timing out, deleting nothing, and
having more to do the next night."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import structlog
from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.idempotency import EXPIRED_KEYS
from app.core.jobs.worker import Jobs

NIGHTLY = "15 3 * * *"  # 03:15 UTC: away from the hour, when other crons pile up
BATCH_ROWS = 10_000
# The share of JOBS_TIMEOUT the deletions may take: the rest is the commit's.
BUDGET_SHARE = 0.5

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
    session: AsyncSession, statement: TextClause, cutoff: datetime, deadline: float
) -> tuple[int, bool]:
    """Run `statement` (a DELETE of at most :batch rows older than :cutoff) until it
    deletes fewer than a batch, or `deadline` (time.monotonic()) passes; how many rows it
    deleted, and whether it finished."""
    deleted = 0
    while True:
        result = await session.execute(statement, {"cutoff": cutoff, "batch": BATCH_ROWS})
        batch = int(getattr(result, "rowcount", 0) or 0)
        deleted += batch
        if batch < BATCH_ROWS:
            return deleted, True
        if time.monotonic() >= deadline:
            return deleted, False


def register_cleanup(jobs: Jobs, settings: Settings) -> None:
    @jobs.every("cleanup", NIGHTLY)
    async def cleanup(session: AsyncSession) -> None:
        deadline = time.monotonic() + settings.jobs_timeout * BUDGET_SHARE
        # The database's clock, which stamps the keys' created_at and checks their expiry
        # on every keyed request: a worker whose clock runs ahead must not delete live keys.
        now: datetime = await session.scalar(text("SELECT now()"))
        # Keys first: a table every keyed write adds to.
        key_cutoff = now - timedelta(seconds=settings.idempotency_key_ttl_seconds)
        keys, finished = await delete_in_batches(session, EXPIRED_KEYS, key_cutoff, deadline)
        cutoff = now - timedelta(days=settings.jobs_retention_days)
        await session.execute(OLD_STATISTICS, {"cutoff": cutoff})  # one row a minute a job
        rows = 0
        if finished:
            rows, finished = await delete_in_batches(session, OLD_LOG_ROWS, cutoff, deadline)
        if finished:
            logger.info("cleanup done", job_log_rows=rows, idempotency_keys=keys)
        else:
            logger.warning(
                "cleanup stopped at its time budget: older rows are left for the next run "
                "(if this repeats, run the cleanup more often than nightly)",
                job_log_rows=rows,
                idempotency_keys=keys,
            )
