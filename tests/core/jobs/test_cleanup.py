"""The nightly cleanup (app/core/jobs/cleanup.py): what it deletes and keeps, each batch
committed before the next, and expired Idempotency-Keys a request reuses meanwhile.

The tests of concurrent transactions commit, on the worker's own engine: their rows
are their own (a job name, a principal) and are deleted afterwards."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest
from pgqueuer.models import Schedule
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.core.config import Settings
from app.core.db import create_session_factory
from app.core.idempotency import _STORE, EXPIRED_KEYS
from app.core.jobs import cleanup as cleanup_module
from app.core.jobs.cleanup import OLD_LOG_ROWS, delete_in_batches, register_cleanup
from app.core.jobs.worker import Jobs, PeriodicWithSessions, _periodic, worker_engine
from tests.conftest import with_overrides


def nightly_cleanup(settings: Settings) -> PeriodicWithSessions:
    """The cleanup as the worker runs it: given its session factory."""
    jobs = Jobs()
    register_cleanup(jobs, settings)
    cron, cleanup = jobs.periodic["cleanup"]
    assert cron == "15 3 * * *"
    return cleanup


async def test_the_cleanup_deletes_in_batches_and_stops_at_its_time_budget(
    session_factory: async_sessionmaker[AsyncSession],
    job_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A night with more rows than one run can delete commits what it did, instead of
    timing out with nothing done (and more to do the next night)."""
    monkeypatch.setattr(cleanup_module, "BATCH_ROWS", 2)
    insert = text(
        "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint)"
        " SELECT now() - interval '30 days', -n, 'successful', 0, :n FROM generate_series(1, 5) n"
    )
    cutoff = datetime.now(UTC) - timedelta(days=7)
    mine = text("SELECT count(*) FROM pgqueuer_log WHERE entrypoint = :n")
    async with session_factory() as session, session.begin():
        await session.execute(text("DELETE FROM pgqueuer_log WHERE created < :c"), {"c": cutoff})
        await session.execute(insert, {"n": job_name})
    # The budget spent at once: one batch, then it stops.
    assert await delete_in_batches(session_factory, OLD_LOG_ROWS, cutoff, deadline=0.0) == (
        2,
        False,
    )
    async with session_factory() as session:
        assert await session.scalar(mine, {"n": job_name}) == 3
    far = time.monotonic() + 60
    assert await delete_in_batches(session_factory, OLD_LOG_ROWS, cutoff, far) == (3, True)
    async with session_factory() as session:
        assert await session.scalar(mine, {"n": job_name}) == 0


async def test_the_nightly_cleanup_drops_old_log_rows_and_expired_keys(
    settings: Settings, session_factory: async_sessionmaker[AsyncSession], job_name: str
) -> None:
    async with session_factory() as session, session.begin():
        failed = await session.scalar(
            text(
                "INSERT INTO pgqueuer (priority, status, entrypoint, attempts)"
                " VALUES (0, 'failed', :n, 6) RETURNING id"
            ),
            {"n": job_name},
        )
        await session.execute(
            text(
                "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint)"
                " VALUES (now() - interval '30 days', -1, 'successful', 0, :n),"
                " (now(), -2, 'successful', 0, :n),"
                " (now() - interval '30 days', :failed, 'exception', 0, :n)"
            ),
            {"n": job_name, "failed": failed},
        )
        await session.execute(
            text(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, created_at)"
                " VALUES (:n, 'expired', '', now() - interval '2 days'), (:n, 'live', '', now())"
            ),
            {"n": job_name},
        )
    await nightly_cleanup(settings)(session_factory)
    async with session_factory() as session:
        left = await session.scalars(
            text("SELECT job_id FROM pgqueuer_log WHERE entrypoint = :n ORDER BY job_id"),
            {"n": job_name},
        )
        keys = await session.scalars(
            text("SELECT key FROM idempotency_keys WHERE principal = :n"), {"n": job_name}
        )
        # The recent row stays, and so does a failed job's: what it died of.
        assert list(left) == [-2, failed]
        assert list(keys) == ["live"]


# Concurrent transactions, committed: on the worker's engine, as the worker runs it.


@pytest.fixture
async def principal(engine: AsyncEngine) -> AsyncIterator[str]:
    """A principal of this test's own; its keys are deleted when the test ends."""
    name = f"cleanup-probe-{uuid.uuid4().hex[:8]}"
    yield name
    async with engine.begin() as connection:
        await connection.execute(
            text("DELETE FROM idempotency_keys WHERE principal = :p"), {"p": name}
        )


@pytest.fixture
def two_row_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cleanup_module, "BATCH_ROWS", 2)


@pytest.fixture
async def worker_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """The worker's sessions, with lock waits long enough to be seen waiting."""
    worker_db = worker_engine(with_overrides(settings, db_lock_timeout=20, jobs_timeout=30))
    yield create_session_factory(worker_db)
    await worker_db.dispose()


async def old_log_rows(engine: AsyncEngine, name: str) -> None:
    """Five log rows past retention: job_id -1 the oldest, so the first deleted."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO pgqueuer_log (created, job_id, status, priority, entrypoint)"
                " SELECT now() - interval '30 days' + n * interval '1 second', -n,"
                " 'successful', 0, :n FROM generate_series(1, 5) n"
            ),
            {"n": name},
        )


async def log_rows_left(engine: AsyncEngine, name: str) -> list[int]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            text("SELECT job_id FROM pgqueuer_log WHERE entrypoint = :n ORDER BY created"),
            {"n": name},
        )
        return list(rows)


async def begin_open_ended(connection: AsyncConnection) -> None:
    """A transaction on `connection` that may stay idle as long as the test needs."""
    await connection.begin()
    await connection.execute(text("SET LOCAL idle_in_transaction_session_timeout = 0"))


async def lock_log_row(connection: AsyncConnection, name: str, job_id: int) -> None:
    await begin_open_ended(connection)
    await connection.execute(
        text("SELECT FROM pgqueuer_log WHERE entrypoint = :n AND job_id = :id FOR UPDATE"),
        {"n": name, "id": job_id},
    )


async def statements_running(engine: AsyncEngine, like: str, waiting_for_a_lock: bool) -> int:
    """How many statements of other connections whose text contains `like` are running
    (or only those waiting for a lock)."""
    async with engine.connect() as connection:
        running = await connection.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                " AND query LIKE '%' || :like || '%' AND pid <> pg_backend_pid()"
                " AND (NOT :waiting OR wait_event_type = 'Lock')"
            ),
            {"like": like, "waiting": waiting_for_a_lock},
        )
    return int(running or 0)


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"still false after {seconds} s")
        await asyncio.sleep(0.05)


async def store(connection: AsyncConnection, principal: str, key: str, ttl: timedelta) -> bool:
    """A keyed request's store of its key and response (app/core/idempotency.py): False
    if the key is taken, and its stored response would be replayed."""
    result = await connection.exec_driver_sql(
        _STORE, (principal, key, "fresh", 201, json.dumps({}), b"{}", ttl)
    )
    return result.first() is not None


async def expired_key(engine: AsyncEngine, principal: str, key: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, created_at)"
                " VALUES (:p, :k, 'old', now() - interval '2 days')"
            ),
            {"p": principal, "k": key},
        )


@pytest.mark.usefixtures("two_row_batches")
async def test_each_batch_commits_before_the_next_one_starts(
    engine: AsyncEngine,
    settings: Settings,
    worker_sessions: async_sessionmaker[AsyncSession],
    job_name: str,
    principal: str,
) -> None:
    """While the run waits on a row it has not reached yet, what its earlier batches
    deleted is gone for every other connection, and their row locks are released: a
    request reusing a deleted key stores it at once, within the api's DB_LOCK_TIMEOUT."""
    await expired_key(engine, principal, "reused")
    await old_log_rows(engine, job_name)
    cleanup = nightly_cleanup(settings)
    async with engine.connect() as locker:
        await lock_log_row(locker, job_name, -5)  # the newest: the last batch's
        run = asyncio.ensure_future(cleanup(worker_sessions))
        try:

            async def earlier_batches_committed() -> bool:
                return await log_rows_left(engine, job_name) == [-5]

            await eventually(earlier_batches_committed)
            assert not run.done()
            async with engine.begin() as request:
                assert await store(request, principal, "reused", timedelta(days=1))
        finally:
            await locker.rollback()
            await asyncio.wait_for(run, 20)
    assert await log_rows_left(engine, job_name) == []


@pytest.mark.usefixtures("two_row_batches")
async def test_a_run_cut_short_keeps_what_its_batches_committed(
    engine: AsyncEngine,
    settings: Settings,
    worker_sessions: async_sessionmaker[AsyncSession],
    job_name: str,
) -> None:
    """A run past its time limit (or whose worker died) rolls back its current batch
    only: the next run starts where it stopped."""
    await old_log_rows(engine, job_name)
    # The worker's wrapper, with a time limit shorter than the engine's lock wait.
    run = _periodic(worker_sessions, job_name, nightly_cleanup(settings), timeout=2)
    async with engine.connect() as locker:
        await lock_log_row(locker, job_name, -3)  # the second batch's oldest
        try:
            with pytest.raises(TimeoutError):
                await run(cast("Schedule", None))  # the schedule's row: not read

            # Its statement ends on the server too, lock or not: the batch it was in is
            # rolled back, not left to finish once the lock is released.
            async def ended() -> bool:
                return not await statements_running(engine, "DELETE FROM pgqueuer_log", False)

            await eventually(ended)
        finally:
            await locker.rollback()
    assert await log_rows_left(engine, job_name) == [-3, -4, -5]


async def test_a_key_stored_afresh_while_a_batch_waits_for_it_is_kept(
    engine: AsyncEngine,
    worker_sessions: async_sessionmaker[AsyncSession],
    principal: str,
) -> None:
    """An expired key a request reuses: the request's store updates the row, and the
    batch that picked that row waits for the request's commit, then must see the row as
    stored afresh, not delete the new response (a retry would then run again)."""
    await expired_key(engine, principal, "reused")
    cutoff = datetime.now(UTC) - timedelta(days=1)
    async with engine.connect() as request:
        await begin_open_ended(request)
        assert await store(request, principal, "reused", timedelta(days=1))
        batch = asyncio.create_task(
            delete_in_batches(worker_sessions, EXPIRED_KEYS, cutoff, time.monotonic() + 60)
        )
        try:

            async def batch_waits() -> bool:
                return bool(await statements_running(engine, "DELETE FROM idempotency_keys", True))

            await eventually(batch_waits)
        finally:
            await request.commit()
            deleted, _ = await asyncio.wait_for(batch, 20)
    assert deleted == 0
    async with engine.connect() as connection:
        fingerprint = await connection.scalar(
            text("SELECT fingerprint FROM idempotency_keys WHERE principal = :p"), {"p": principal}
        )
    assert fingerprint == "fresh"


async def test_a_key_still_live_for_a_request_in_flight_is_not_deleted(
    engine: AsyncEngine,
    settings: Settings,
    worker_sessions: async_sessionmaker[AsyncSession],
    principal: str,
) -> None:
    """A request judges expiry by its own transaction's now(), earlier than the run's
    when it began first: a key it still sees as live must be there to replay, not
    deleted under it (its retry would run again)."""
    ttl = 1
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO idempotency_keys (principal, key, fingerprint) VALUES (:p, 'k', '')"),
            {"p": principal},
        )
    async with engine.connect() as request:
        await begin_open_ended(request)  # its now(), from here on
        await asyncio.sleep(ttl + 0.5)  # expired by the run's clock, not by the request's
        await nightly_cleanup(with_overrides(settings, idempotency_key_ttl_seconds=ttl))(
            worker_sessions
        )
        taken = not await store(request, principal, "k", timedelta(seconds=ttl))
        await request.rollback()
    assert taken
