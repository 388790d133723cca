"""Jobs against the real database and a real PgQueuer worker: what commits runs, what
rolls back never exists, what keeps failing is kept as failed with its error.

These tests commit (a worker only sees committed jobs), so each uses job names and
dedupe keys of its own and deletes its rows afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any, cast

import pgqueuer
import pytest
import sqlalchemy.exc
import structlog
from pgqueuer import Job
from pgqueuer.models import Schedule
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import NoTransactionError, create_read_session_factory, create_session_factory
from app.core.jobs import metrics
from app.core.jobs.enqueue import enqueue
from app.core.jobs.worker import Jobs, _periodic, _transactional, build_worker, worker_engine
from tests.conftest import with_overrides
from tests.core.jobs.conftest import last_error


async def jobs_named(engine: AsyncEngine, name: str) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT status::text, attempts FROM pgqueuer WHERE entrypoint = :n"), {"n": name}
        )
        return [dict(row._mapping) for row in rows]


async def test_a_job_enqueued_in_a_rolled_back_transaction_never_exists(
    engine: AsyncEngine, job_name: str
) -> None:
    """Even as the transaction's first statement, before SQLAlchemy has sent BEGIN."""
    async with AsyncSession(engine) as session:
        await enqueue(session, job_name, {"n": 1})
        await session.rollback()
    assert await jobs_named(engine, job_name) == []


async def test_a_job_enqueued_on_a_read_session_is_refused_never_committed_at_once(
    engine: AsyncEngine, job_name: str
) -> None:
    """A read session autocommits (ReadSessionDep): an enqueue through it would be
    committed at once, whatever became of the request. A bug, said as one."""
    async with create_read_session_factory(engine)() as session:
        with pytest.raises(NoTransactionError, match="SessionDep"):
            await enqueue(session, job_name, {"n": 1})
    assert await jobs_named(engine, job_name) == []


async def test_a_committed_job_exists_once_per_dedupe_key(
    engine: AsyncEngine, job_name: str
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, job_name, {"n": 1}, dedupe_key=f"{job_name}:1")
        await enqueue(session, job_name, {"n": 1}, dedupe_key=f"{job_name}:1")  # skipped
    assert await jobs_named(engine, job_name) == [{"status": "queued", "attempts": 0}]


async def run_worker_until(
    settings: Settings, jobs: Jobs, done: Callable[[], Awaitable[bool]], seconds: float = 20
) -> None:
    """A real PgQueuer worker on the test database, stopped once `done()` holds."""
    shutdown = asyncio.Event()
    worker = asyncio.create_task(
        pgqueuer.run(
            partial(build_worker, settings, jobs),
            dequeue_timeout=timedelta(seconds=0.2),
            heartbeat_timeout=timedelta(seconds=5),
            shutdown=shutdown,
        )
    )
    try:
        async with asyncio.timeout(seconds):
            while True:
                if await done():
                    break
                await asyncio.sleep(0.1)
    finally:
        shutdown.set()
        await asyncio.wait_for(worker, 15)


async def test_a_committed_job_runs_in_a_transaction_of_its_own(
    engine: AsyncEngine, settings: Settings, job_name: str
) -> None:
    seen: list[dict[str, Any]] = []
    jobs = Jobs()

    @jobs.job(job_name)
    async def record(session: AsyncSession, payload: dict[str, Any]) -> None:
        assert session.in_transaction()
        seen.append(payload)

    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, job_name, {"order": "A-1"})

    async def ran() -> bool:
        return bool(seen)

    await run_worker_until(settings, jobs, ran)
    assert seen == [{"order": "A-1"}]
    assert await jobs_named(engine, job_name) == []  # done: gone from the queue
    assert runs(job_name) == {"success": 1, "retry": 0, "failed": 0}
    assert metrics.REGISTRY.get_sample_value("job_wait_seconds_count", {"job_name": job_name}) == 1


async def test_a_job_past_its_timeout_fails_and_is_retried_with_the_worker_s_own_limits(
    engine: AsyncEngine, settings: Settings, job_name: str
) -> None:
    """A hanging handler holds its slot for JOBS_TIMEOUT at most; a statement longer than
    the api's DB_STATEMENT_TIMEOUT is fine in a job."""
    tries = 0
    jobs = Jobs()

    @jobs.job(job_name)
    async def slow(session: AsyncSession, payload: dict[str, Any]) -> None:
        nonlocal tries
        tries += 1
        await session.execute(text("SELECT pg_sleep(0.3)"))  # over the api's 0.1 s here
        if tries == 1:
            await asyncio.sleep(3600)  # hangs: cut at the job's timeout

    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, job_name, {})

    async def done() -> bool:
        return runs(job_name)["success"] == 1

    limits = with_overrides(settings, jobs_timeout=1.0, db_statement_timeout=0.1)
    with structlog.testing.capture_logs() as logged:
        await run_worker_until(limits, jobs, done)
    assert tries == 2
    assert runs(job_name) == {"success": 1, "retry": 1, "failed": 0}
    retried = [line["error"] for line in logged if line["event"] == "job failed, retrying"]
    assert [error.split(":")[0] for error in retried] == ["TimeoutError"]
    assert [line["job_name"] for line in logged if line["event"] == "job done"] == [job_name]


async def test_the_worker_has_a_connection_for_each_job_and_one_for_a_periodic_job(
    settings: Settings,
) -> None:
    """JOBS_CONCURRENCY jobs at once and a periodic one each hold a connection for their
    whole run: one fewer, and the periodic job would wait for a job to end."""
    limits = with_overrides(settings, jobs_concurrency=3, jobs_timeout=1.0)
    worker_db = worker_engine(limits)
    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(limits.jobs_concurrency + 1):  # none waits: all fit
                await held.enter_async_context(worker_db.connect())
            with pytest.raises(sqlalchemy.exc.TimeoutError):  # and no more
                await held.enter_async_context(worker_db.connect())
    finally:
        await worker_db.dispose()


async def test_a_cut_run_s_statement_ends_on_the_server_too(
    engine: AsyncEngine, settings: Settings
) -> None:
    """Cut at JOBS_TIMEOUT, a run drops its connection; Postgres must not go on running
    its statement (and holding its locks) until the statement timeout."""
    limits = with_overrides(settings, jobs_timeout=3.0)
    worker_db = worker_engine(limits)

    async def slow(session: AsyncSession, payload: dict[str, Any]) -> None:
        await asyncio.sleep(2.5)
        # Started 0.5 s before the cut: its statement timeout would end it 2.5 s after.
        await session.execute(text("SELECT pg_sleep(30) /* cut-run-probe */"))

    run = _transactional(create_session_factory(worker_db), slow, limits.jobs_timeout)
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await run(cast("Job", SimpleNamespace(payload=None)))
        running = 1
        while running and time.monotonic() - started < 6:
            async with engine.connect() as connection:
                running = int(await connection.scalar(RUNNING_PROBE) or 0)
            await asyncio.sleep(0.1)
        assert running == 0
        assert time.monotonic() - started < 5  # the cut at 3 s, then a check a second
    finally:
        await worker_db.dispose()


RUNNING_PROBE = text(
    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
    " AND query LIKE '%cut-run-probe%' AND pid <> pg_backend_pid()"
)


async def test_a_failing_periodic_job_is_measured(
    session_factory: async_sessionmaker[AsyncSession], job_name: str
) -> None:
    """PgQueuer only logs a periodic job's error: the run is counted as failed too."""

    async def broken(sessions: async_sessionmaker[AsyncSession]) -> None:
        raise RuntimeError("broken")

    run = _periodic(session_factory, job_name, broken, timeout=5)
    with pytest.raises(RuntimeError):
        await run(cast("Schedule", None))  # the schedule's row: not read
    assert runs(job_name)["failed"] == 1


async def test_a_job_s_series_start_at_zero_so_that_its_first_failure_is_a_rise(
    settings: Settings, job_name: str
) -> None:
    """An alert on `increase()` sees no rise from a series' first sample: a failure that
    created its series at 1 (a nightly job's, once) would never be seen."""
    jobs = Jobs()

    @jobs.job(job_name)
    async def noop(session: AsyncSession, payload: dict[str, Any]) -> None:
        pass

    @jobs.every(f"{job_name}-nightly", "15 3 * * *")
    async def nightly(session: AsyncSession) -> None:
        pass

    async with build_worker(settings, jobs):
        for name in (job_name, f"{job_name}-nightly"):
            for outcome in ("success", "retry", "failed"):
                labels = {"job_name": name, "outcome": outcome}
                assert metrics.REGISTRY.get_sample_value("job_duration_seconds_count", labels) == 0


async def test_a_worker_names_the_queued_jobs_it_has_no_handler_for_when_it_starts(
    engine: AsyncEngine, settings: Settings, job_name: str
) -> None:
    """A job renamed or removed by a deploy, or a typo: nothing would run its queued rows,
    and nothing else would say so."""
    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, job_name, {})
    jobs = Jobs()

    @jobs.job(f"{job_name}-renamed")
    async def renamed(session: AsyncSession, payload: dict[str, Any]) -> None:
        pass

    with structlog.testing.capture_logs() as logged:
        async with build_worker(settings, jobs):
            pass
    warned = [line for line in logged if line["event"].startswith("queued jobs no handler")]
    assert len(warned) == 1
    assert job_name in warned[0]["jobs"]
    assert f"{job_name}-renamed" not in warned[0]["jobs"]

    with structlog.testing.capture_logs() as logged:
        async with build_worker(settings, Jobs(handlers={job_name: renamed})):
            pass
    warned = [line for line in logged if line["event"].startswith("queued jobs no handler")]
    assert all(job_name not in line["jobs"] for line in warned)


def runs(job: str) -> dict[str, float]:
    """The worker's metrics: its runs of `job` by outcome."""
    return {
        outcome: metrics.REGISTRY.get_sample_value(
            "job_duration_seconds_count", {"job_name": job, "outcome": outcome}
        )
        or 0
        for outcome in ("success", "retry", "failed")
    }


async def test_a_job_whose_runs_cannot_be_counted_still_runs(
    engine: AsyncEngine, settings: Settings, job_name: str
) -> None:
    """An old job (past the heartbeat timeout) has its earlier runs counted first. When
    that count fails, here on a pooled connection Postgres closed (a failover), the
    job runs anyway: it is not kept as failed without ever running."""
    pids: list[int] = []
    ran: list[str] = []
    jobs = Jobs()

    @jobs.job(job_name)
    async def record(session: AsyncSession, payload: dict[str, Any]) -> None:
        pids.append(int(await session.scalar(text("SELECT pg_backend_pid()")) or 0))
        ran.append(payload["n"])

    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, job_name, {"n": "first"})
    old_enqueued = False

    async def settled() -> bool:
        nonlocal old_enqueued
        if not pids:
            return False
        if not old_enqueued:
            # The worker's pool keeps the first job's connection: close it under it, then
            # queue a job that looks an hour old.
            async with engine.begin() as connection:
                await connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
            async with AsyncSession(engine) as session, session.begin():
                await enqueue(session, job_name, {"n": "old"})
                await session.execute(
                    text(
                        "UPDATE pgqueuer SET created = now() - interval '1 hour'"
                        " WHERE entrypoint = :n AND status = 'queued'"
                    ),
                    {"n": job_name},
                )
            old_enqueued = True
            return False
        return "old" in ran or any(
            j["status"] == "failed" for j in await jobs_named(engine, job_name)
        )

    await run_worker_until(settings, jobs, settled)
    assert ran == ["first", "old"]
    assert await jobs_named(engine, job_name) == []


async def test_a_job_that_keeps_failing_is_kept_as_failed_with_its_error(
    engine: AsyncEngine, settings: Settings, job_name: str
) -> None:
    tries = 0
    jobs = Jobs()

    @jobs.job(job_name)
    async def poison(session: AsyncSession, payload: dict[str, Any]) -> None:
        nonlocal tries
        tries += 1
        raise RuntimeError(f"poisoned, try {tries}")

    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, job_name, {})

    async def failed() -> bool:
        return [row["status"] for row in await jobs_named(engine, job_name)] == ["failed"]

    # Two attempts: the first try, then one retry a second later (the backoff's start).
    with structlog.testing.capture_logs() as logged:
        await run_worker_until(with_overrides(settings, jobs_max_attempts=1), jobs, failed)
    assert tries == 2
    # The first try's error is said when it is retried, not only once none is left.
    retried = [line for line in logged if line["event"] == "job failed, retrying"]
    assert [line["error"] for line in retried] == ["RuntimeError: poisoned, try 1"]
    error = await last_error(engine, job_name)
    assert error == "poisoned, try 2"
    assert runs(job_name) == {"success": 0, "retry": 1, "failed": 1}


async def test_the_queue_gauges_count_each_jobs_waiting_and_its_oldest_due(
    engine: AsyncEngine, job_name: str
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        for n in range(3):
            await enqueue(session, job_name, {"n": n})
        await session.execute(
            text(
                "UPDATE pgqueuer SET execute_after = now() - interval '90 seconds'"
                " WHERE id = (SELECT min(id) FROM pgqueuer WHERE entrypoint = :n)"
            ),
            {"n": job_name},
        )
    async with engine.connect() as connection:
        rows = [
            dict(row) for row in (await connection.execute(text(metrics.QUEUE_SAMPLE))).mappings()
        ]
    idle = f"{job_name}_idle"
    metrics.record_queue(rows, [job_name, idle])

    def gauge(name: str, job: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(name, {"job_name": job})

    assert gauge("jobs_queued", job_name) == 3
    assert gauge("jobs_running", job_name) == 0
    assert 90 <= (gauge("jobs_oldest_waiting_seconds", job_name) or 0) < 120
    # A job this worker runs that has nothing waiting reads 0, not "no data".
    assert gauge("jobs_queued", idle) == 0
    assert gauge("jobs_oldest_waiting_seconds", idle) == 0
    # Once its jobs are gone (done, dropped), a job this worker does not run reads 0 too,
    # not the last value it had.
    metrics.record_queue([], [idle])
    assert gauge("jobs_queued", job_name) == 0
    assert gauge("jobs_oldest_waiting_seconds", job_name) == 0


def test_a_periodic_job_with_a_bad_schedule_or_a_taken_name_is_refused_at_once() -> None:
    """Not when the worker starts, where PgQueuer refuses it and the worker restarts
    forever: the tests that import the jobs fail first."""

    async def report(_: AsyncSession) -> None:
        return None

    jobs = Jobs()
    with pytest.raises(ValueError, match="not a cron expression"):
        jobs.every("report", "every minute")
    jobs.every("report", "* * * * *")(report)
    with pytest.raises(ValueError, match="registered twice"):
        jobs.every("report", "0 * * * *")
    with pytest.raises(ValueError, match="registered twice"):
        jobs.every_with_sessions("report", "0 * * * *")
