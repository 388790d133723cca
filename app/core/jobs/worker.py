"""The worker process: runs the jobs domains register, with PgQueuer.

    jobs = Jobs()

    @jobs.job("confirm_order")
    async def confirm_order(session: AsyncSession, payload: dict[str, Any]) -> None: ...

A handler gets a session in a transaction and the job's payload; the worker commits
when it returns (one owner of the transaction, as SessionDep is for requests). A
periodic job gets one too (`every`), or, when one transaction would be too long (a
cleanup in batches), the worker's session factory (`every_with_sessions`): each of its
`async with sessions() as session, session.begin():` blocks commits as it ends. What
the library gives, and what this module only wires:
- a job that raises is retried with exponential backoff (JOBS_MAX_ATTEMPTS), then
  kept as `failed` with its error (`python -m app.core.jobs.cli failed`, `retry`);
- a job whose worker died (kill -9, a lost node) runs again once its heartbeat is
  older than JOBS_HEARTBEAT_TIMEOUT: handlers run at least once, so are idempotent;
- on SIGTERM the worker takes no new job and finishes those it runs; what the
  orchestrator kills after its grace period comes back through the heartbeat;
- a periodic job runs once per period across every worker (a row lock decides);
- a lost database connection restarts the PgQueuer in the process (RESTART_DELAY),
  once the jobs it was running have ended.
What it adds: a time limit on every run (JOBS_TIMEOUT), which also bounds a shutdown
and a restart; a pool sized for the jobs that run at once; every run counts as an
attempt, even one that took its worker down (executor.py); each run is measured,
periodic ones too (metrics.py); a warning at start naming the queued jobs it has no
handler for (renamed or removed by a deploy), which would otherwise wait unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import asyncpg
import orjson
import pgqueuer
import structlog
from croniter import croniter
from pgqueuer import AsyncpgDriver, Job, PgQueuer, Queries
from pgqueuer.models import Schedule
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings, misspelled_settings
from app.core.db import create_engine, create_session_factory
from app.core.jobs import alive, metrics
from app.core.jobs.executor import JobExecutor

Handler = Callable[[AsyncSession, dict[str, Any]], Awaitable[None]]
Periodic = Callable[[AsyncSession], Awaitable[None]]
# A periodic job that opens its own transactions, from the worker's session factory.
PeriodicWithSessions = Callable[[async_sessionmaker[AsyncSession]], Awaitable[None]]

# How often the liveness file is touched, and the readiness file while the database
# answers (the healthchecks, app/core/jobs/alive.py, read their ages), and the queue
# gauges sampled: finer than any scrape interval.
ALIVE_EVERY_SECONDS = 5.0
# A lost database connection (a restart, a failover, a read-only standby) ends the
# worker's PgQueuer, not its process: it starts a new one this long after, on fresh
# connections. A process that exited would wait on its container's restart back-off,
# which doubles with each exit, and be slowest to come back after the longest outage.
RESTART_DELAY = timedelta(seconds=2)
# How the worker's own connection shows in pg_stat_activity.
APPLICATION_NAME = "jobs-worker"
# A run cut at JOBS_TIMEOUT still rolls back; this much longer bounds that too (against a
# server that stopped answering, the connection is then dropped at once, app/core/db.py).
ROLLBACK_SECONDS = 2.0

logger = structlog.get_logger(__name__)

# Jobs queued under a name this worker has no handler for (a typo, a job renamed or
# removed by a deploy): nothing runs them, and nothing else would say so.
_UNHANDLED = """
SELECT DISTINCT entrypoint FROM pgqueuer
WHERE status = 'queued' AND entrypoint <> ALL($1::text[])
ORDER BY entrypoint
"""


@dataclass
class Jobs:
    """The jobs and periodic jobs a worker runs; each domain registers its own."""

    handlers: dict[str, Handler] = field(default_factory=dict)
    # Each run as the worker calls it: with its session factory (`every` wraps the
    # handler in one transaction).
    periodic: dict[str, tuple[str, PeriodicWithSessions]] = field(default_factory=dict)

    def job(self, name: str) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            if name in self.handlers:
                raise ValueError(f"job {name!r} is registered twice")
            self.handlers[name] = handler
            return handler

        return register

    def every(self, name: str, cron: str) -> Callable[[Periodic], Periodic]:
        """A job run once per period of `cron` (e.g. "0 3 * * *"), by one worker, in one
        transaction: the worker commits when it returns."""
        self._check_periodic(name, cron)

        def register(handler: Periodic) -> Periodic:
            self.periodic[name] = (cron, _in_one_transaction(handler))
            return handler

        return register

    def every_with_sessions(
        self, name: str, cron: str
    ) -> Callable[[PeriodicWithSessions], PeriodicWithSessions]:
        """As `every`, for a handler that gets the worker's session factory and opens its
        own transactions, each committed before the next: its locks last one
        transaction, and a run cut short (JOBS_TIMEOUT, a killed worker) keeps what it
        committed. Its runs are time-limited the same way."""
        self._check_periodic(name, cron)

        def register(handler: PeriodicWithSessions) -> PeriodicWithSessions:
            self.periodic[name] = (cron, handler)
            return handler

        return register

    def _check_periodic(self, name: str, cron: str) -> None:
        # Checked here, as `job` checks its names: PgQueuer would refuse either only
        # when the worker starts, and the worker would restart forever.
        if not croniter.is_valid(cron):
            raise ValueError(f"periodic job {name!r}: {cron!r} is not a cron expression")
        if name in self.periodic:
            raise ValueError(f"periodic job {name!r} is registered twice")


def _in_one_transaction(handler: Periodic) -> PeriodicWithSessions:
    async def run(sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session, session.begin():
            await handler(session)

    return run


def _transactional(
    sessions: async_sessionmaker[AsyncSession], handler: Handler, timeout: float
) -> Callable[[Job], Awaitable[None]]:
    async def run(job: Job) -> None:
        payload = orjson.loads(job.payload) if job.payload else {}
        # A run past the timeout raises TimeoutError, an attempt like any failure: a
        # handler that hangs cannot hold its slot, a shutdown or a restart for ever.
        async with (
            asyncio.timeout(timeout + ROLLBACK_SECONDS),
            sessions() as session,
            session.begin(),
            asyncio.timeout(timeout),
        ):
            await handler(session, payload)

    return run


def _periodic(
    sessions: async_sessionmaker[AsyncSession],
    name: str,
    handler: PeriodicWithSessions,
    timeout: float,
) -> Callable[[Schedule], Awaitable[None]]:
    async def run(_: Schedule) -> None:
        # PgQueuer only logs a periodic job's error (it runs again next period): measured
        # here like a job's runs, so a failing one shows in job_duration_seconds.
        started, outcome = time.perf_counter(), "failed"
        try:
            # As for a job: past the timeout, the transaction open then still rolls back
            # (leaving its `async with`), within ROLLBACK_SECONDS.
            async with asyncio.timeout(timeout + ROLLBACK_SECONDS), asyncio.timeout(timeout):
                await handler(sessions)
            outcome = "success"
        finally:
            metrics.DURATION.labels(name, outcome).observe(time.perf_counter() - started)

    return run


async def _keep_alive(driver: AsyncpgDriver, jobs: Jobs) -> None:
    """Sample the queue for the gauges, and touch alive.ALIVE_FILE while that works. Through
    the driver: it serializes the connection's users (a second query at once is an
    error)."""
    while True:
        with contextlib.suppress(Exception):
            rows = await asyncio.wait_for(driver.fetch(metrics.QUEUE_SAMPLE), ALIVE_EVERY_SECONDS)
            metrics.record_queue(rows, jobs.handlers)
            alive.ALIVE_FILE.touch()  # a tmpfs inode: no disk to wait for
        await asyncio.sleep(ALIVE_EVERY_SECONDS)


def worker_engine(settings: Settings) -> AsyncEngine:
    """The worker's engine, with its own limits, not the api's request-sized ones: a
    job's statements and transaction may take as long as the job may, and every job
    running at once (and a periodic one) has a connection; a second periodic job waits
    for one. A row lock still waits DB_LOCK_TIMEOUT at most: the run fails and is
    retried."""
    return create_engine(
        settings.model_copy(
            update={
                "db_statement_timeout": settings.jobs_timeout,
                "db_idle_in_transaction_timeout": settings.jobs_timeout,
                "db_pool_size": settings.jobs_concurrency + 1,
                "db_max_overflow": 0,
                "db_pool_timeout": settings.jobs_timeout,
            }
        ),
        # A run cut at JOBS_TIMEOUT drops its connection; Postgres would go on running
        # its statement, locks held, until the statement timeout. Checked every second
        # while a statement runs, a closed connection ends it.
        server_settings={"client_connection_check_interval": "1000"},
    )


@asynccontextmanager
async def build_worker(settings: Settings, jobs: Jobs) -> AsyncIterator[PgQueuer]:
    """A PgQueuer on its own connection, with every job of `jobs` registered."""
    connection = await asyncpg.connect(
        settings.postgres_dsn,
        timeout=settings.db_connect_timeout,
        server_settings={"application_name": APPLICATION_NAME},
    )
    engine = worker_engine(settings)
    sessions = create_session_factory(engine)
    driver = AsyncpgDriver(connection)
    worker = PgQueuer(driver)
    retries = partial(
        JobExecutor,
        max_attempts=settings.jobs_max_attempts,
        initial_delay=timedelta(seconds=1),
        max_delay=timedelta(minutes=5),
        sessions=sessions,
        heartbeat_timeout=settings.jobs_heartbeat_timeout,
    )
    for name, handler in jobs.handlers.items():
        worker.entrypoint(name, on_failure="hold", executor_factory=retries)(
            _transactional(sessions, handler, settings.jobs_timeout)
        )
    for name, (cron, periodic) in jobs.periodic.items():
        worker.schedule(name, cron)(_periodic(sessions, name, periodic, settings.jobs_timeout))
    metrics.declare([*jobs.handlers, *jobs.periodic])
    sampler = asyncio.create_task(_keep_alive(driver, jobs))
    logger.info("worker started", jobs=sorted(jobs.handlers), periodic=sorted(jobs.periodic))
    try:
        # Through the driver, which the sampler shares (one query at a time).
        if unhandled := await driver.fetch(_UNHANDLED, [*jobs.handlers, *jobs.periodic]):
            logger.warning(
                "queued jobs no handler runs: they wait until one is registered, or are"
                " dropped (make jobs, make drop-job)",
                jobs=[row["entrypoint"] for row in unhandled],
            )
        yield worker
    finally:
        sampler.cancel()
        # Not mid-query on the connection closed next.
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        # Bounded: after a lost connection, a server that does not answer must not hold
        # up the restart (past the timeout, asyncpg drops the socket).
        await connection.close(timeout=settings.db_connect_timeout)
        await engine.dispose()
        logger.info("worker stopped")


@asynccontextmanager
async def queries_for(settings: Settings) -> AsyncIterator[Queries]:
    """PgQueuer's queries on a connection of their own, for the jobs CLI."""
    connection = await asyncpg.connect(settings.postgres_dsn, timeout=settings.db_connect_timeout)
    try:
        yield Queries(AsyncpgDriver(connection))
    finally:
        await connection.close()


async def _loop_alive() -> None:
    """Touch alive.LOOP_FILE for as long as the event loop turns (the liveness check):
    through database outages too, which the worker outlives by itself."""
    while True:
        with contextlib.suppress(OSError):  # unwritable: the check then fails, visibly
            alive.LOOP_FILE.touch()
        await asyncio.sleep(ALIVE_EVERY_SECONDS)


async def work(settings: Settings, jobs: Jobs, shutdown: asyncio.Event | None = None) -> None:
    """Run the worker until `shutdown` is set; without one, until SIGTERM or SIGINT
    (PgQueuer handles both)."""
    loop_alive = asyncio.create_task(_loop_alive())
    try:
        await pgqueuer.run(
            partial(build_worker, settings, jobs),
            heartbeat_timeout=timedelta(seconds=settings.jobs_heartbeat_timeout),
            # Woken by NOTIFY when a job is enqueued; the timeout only bounds a missed one.
            dequeue_timeout=timedelta(seconds=5),
            batch_size=max(1, settings.jobs_concurrency // 2),
            max_concurrent_tasks=settings.jobs_concurrency,
            shutdown=shutdown,
            restart_on_failure=True,
            restart_delay=RESTART_DELAY,
        )
    finally:
        loop_alive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_alive


def run(settings: Settings, jobs: Jobs) -> None:
    """Run the worker until SIGTERM or SIGINT (PgQueuer handles both)."""
    for variable, setting in misspelled_settings(os.environ).items():
        logger.warning("not a setting: ignored", variable=variable, did_you_mean=setting)
    if settings.metrics_enabled:
        metrics.serve(settings.jobs_metrics_port)
    asyncio.run(work(settings, jobs))
