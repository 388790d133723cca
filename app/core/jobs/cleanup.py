"""Core's own periodic job: every night, drop what only grows. Finished jobs' log
rows older than JOBS_RETENTION_DAYS, and Idempotency-Keys past their TTL. Failed jobs
stay, with their log rows (what they died of), until someone retries them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.idempotency import delete_expired_keys
from app.core.jobs.worker import Jobs

NIGHTLY = "15 3 * * *"  # 03:15 UTC: away from the hour, when other crons pile up

logger = structlog.get_logger(__name__)


def register_cleanup(jobs: Jobs, settings: Settings) -> None:
    @jobs.every("cleanup", NIGHTLY)
    async def cleanup(session: AsyncSession) -> None:
        cutoff = datetime.now(UTC) - timedelta(days=settings.jobs_retention_days)
        logs = await session.execute(
            # A job still in the queue (failed, or waiting to retry) keeps its history:
            # `make jobs` shows the error a failed job died of from these rows.
            text(
                "DELETE FROM pgqueuer_log WHERE created < :cutoff AND NOT EXISTS"
                " (SELECT FROM pgqueuer WHERE pgqueuer.id = pgqueuer_log.job_id)"
            ),
            {"cutoff": cutoff},
        )
        await session.execute(
            text("DELETE FROM pgqueuer_statistics WHERE created < :cutoff"), {"cutoff": cutoff}
        )
        keys = await delete_expired_keys(session, settings.idempotency_key_ttl_seconds)
        logger.info(
            "cleanup done", job_log_rows=getattr(logs, "rowcount", 0), idempotency_keys=keys
        )
