"""How the worker runs each job: PgQueuer's retrying executor, plus the job's metrics
and a stop for a job that keeps taking its worker down.

PgQueuer counts an attempt when a job raises. A job that kills its worker instead (it
exhausts the memory limit, crashes the interpreter) raises nothing: its heartbeat goes
stale, another worker takes it, and that one dies too, without end. So every run
counts here, finished or not: a job already run more than JOBS_MAX_ATTEMPTS times is
kept as failed without running again. Runs are counted from PgQueuer's log, where each
pick is a row; only for a job older than the heartbeat timeout, since a younger one
cannot have been abandoned yet (the common case pays no query).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import structlog
from pgqueuer import DatabaseRetryEntrypointExecutor, Job
from pgqueuer.errors import RetryRequested
from pgqueuer.models import Context
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.jobs.metrics import DURATION, RERUNS, WAIT

logger = structlog.get_logger(__name__)

# Picks since the job was last queued afresh (enqueued, or retried by hand: a retry
# after a failure logs 'queued' with its error, and does not restart the count).
RUNS = text("""
SELECT count(*) FROM pgqueuer_log
WHERE job_id = :id AND status = 'picked' AND created >= (
    SELECT coalesce(max(created), '-infinity') FROM pgqueuer_log
    WHERE job_id = :id AND status = 'queued' AND traceback IS NULL)
""")


class JobKeepsDyingError(Exception):
    """A job whose runs took their worker down more often than it may be tried."""


@dataclasses.dataclass
class JobExecutor(DatabaseRetryEntrypointExecutor):
    sessions: async_sessionmaker[AsyncSession] | None = None
    heartbeat_timeout: float = 30.0

    async def execute(self, job: Job, context: Context) -> None:
        name = job.entrypoint
        try:
            await self._refuse_a_job_that_keeps_dying(job)
        except JobKeepsDyingError:
            DURATION.labels(name, "failed").observe(0)
            raise
        except (SQLAlchemyError, OSError) as error:
            # The count failed (a pooled connection a failover closed, a timeout): the job
            # runs, as a younger one would. Raised to PgQueuer, it would be kept as failed
            # without a single run, and wait for `retry` by hand.
            logger.warning(
                "job runs not counted, running it",
                job_name=name,
                job_id=job.id,
                error=f"{type(error).__name__}: {error}",
            )
        WAIT.labels(name).observe(max(0.0, time.time() - job.execute_after.timestamp()))
        started = time.perf_counter()
        try:
            await super().execute(job, context)
        except RetryRequested as retry:
            DURATION.labels(name, "retry").observe(time.perf_counter() - started)
            # PgQueuer logs the traceback only once no retry is left: what each earlier
            # try died of, said now, not minutes later.
            cause = retry.__cause__
            logger.warning(
                "job failed, retrying",
                job_name=name,
                job_id=job.id,
                error=f"{type(cause).__name__}: {cause}" if cause else retry.reason,
            )
            raise
        except Exception:
            DURATION.labels(name, "failed").observe(time.perf_counter() - started)
            raise
        elapsed = time.perf_counter() - started
        DURATION.labels(name, "success").observe(elapsed)
        # The line that says the work was done, as an access line says a request was.
        logger.info("job done", job_name=name, job_id=job.id, seconds=round(elapsed, 3))

    async def _refuse_a_job_that_keeps_dying(self, job: Job) -> None:
        age = (datetime.now(UTC) - job.created).total_seconds()
        if self.sessions is None or age < self.heartbeat_timeout:
            return
        async with self.sessions() as session:
            runs = int(await session.scalar(RUNS, {"id": job.id}) or 0)
        earlier = runs - 1  # this run's pick is logged too
        if earlier > job.attempts:  # more runs than raised attempts: one never ended
            RERUNS.labels(job.entrypoint).inc()
        if earlier > self.max_attempts:
            raise JobKeepsDyingError(
                f"{earlier} runs, {earlier - job.attempts} of them never finished (their "
                f"worker died): kept as failed, as JOBS_MAX_ATTEMPTS={self.max_attempts} says"
            )
