"""The app's connection pool serves waiters first come, first served, against a real
Postgres: a returned connection goes to the longest waiter, never to a request that
arrived later, and a waiter that gives up never takes a connection with it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.concurrency import greenlet_spawn

from app.core.config import Settings
from app.core.db import create_engine
from app.core.fair_pool import FairAsyncQueuePool, FairQueue
from tests.conftest import with_overrides


@pytest.fixture
async def one_connection(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """The app's engine with a pool of exactly one connection."""
    engine = create_engine(
        with_overrides(settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout=2)
    )
    yield engine
    await engine.dispose()


async def served_order(engine: AsyncEngine) -> list[str]:
    """The one connection is busy and "waiter" is queued for it. Its holder returns it
    and at once asks again, before the waiter had a chance to run: the race a busy
    worker runs all the time. Returns who got the connection, in order."""
    order: list[str] = []
    holder = await engine.connect()

    async def waiter() -> None:
        async with engine.connect():
            order.append("waiter")

    queued = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)  # the waiter is now waiting in the pool
    await holder.close()
    async with engine.connect():  # no await in between gave the waiter a turn
        order.append("latecomer")
    await queued
    return order


async def test_the_longest_waiter_is_served_first(one_connection: AsyncEngine) -> None:
    assert isinstance(one_connection.pool, FairAsyncQueuePool)
    assert await served_order(one_connection) == ["waiter", "latecomer"]


async def test_the_stock_pool_lets_a_latecomer_cut_in(settings: Settings) -> None:
    """Why the app does not use SQLAlchemy's default asyncio pool (if SQLAlchemy fixes
    this, this test fails and FairAsyncQueuePool can go)."""
    engine = create_async_engine(
        settings.sqlalchemy_url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=2,
    )
    try:
        assert await served_order(engine) == ["latecomer", "waiter"]
    finally:
        await engine.dispose()


async def test_a_waiter_that_times_out_leaves_the_pool_whole(
    settings: Settings,
) -> None:
    engine = create_engine(
        with_overrides(settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout=0.2)
    )
    try:
        holder = await engine.connect()
        with pytest.raises(sa_exc.TimeoutError):
            await engine.connect()
        assert not engine.pool._pool._waiters  # type: ignore[attr-defined]  # nobody left in line
        await holder.close()
        # The timed-out waiter is gone: the returned connection is idle, not handed to it.
        assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("SELECT 1")).scalar() == 1
    finally:
        await engine.dispose()


async def test_a_connection_handed_to_a_cancelled_waiter_goes_to_the_next() -> None:
    """The waiter is handed the item and cancelled before it runs (its request was
    cancelled in that instant): the item goes on to the next waiter, not lost."""
    queue: FairQueue[str] = FairQueue(maxsize=1)
    first = asyncio.create_task(greenlet_spawn(queue.get, True, 5.0))
    second = asyncio.create_task(greenlet_spawn(queue.get, True, 5.0))
    await asyncio.sleep(0.01)  # both are waiting, in that order
    queue.put_nowait("connection")
    first.cancel()  # handed "connection", cancelled before it could run
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 1) == "connection"
    assert queue.qsize() == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    queue: FairQueue[int] = FairQueue(maxsize=5)
    served: list[str] = []

    async def wait(name: str) -> None:
        await greenlet_spawn(queue.get, True, 5.0)
        served.append(name)

    waiters = []
    for name in ("first", "second", "third", "fourth"):
        waiters.append(asyncio.create_task(wait(name)))
        await asyncio.sleep(0.01)  # each queues before the next arrives
    for connection in range(4):
        queue.put_nowait(connection)
        await asyncio.sleep(0.01)
    await asyncio.gather(*waiters)
    assert served == ["first", "second", "third", "fourth"]


async def test_a_connection_passed_on_is_kept_even_when_the_queue_is_full() -> None:
    """The cancelled waiter's connection has nobody to go to and the idle list filled
    up meanwhile: it is kept (the pool counts it as returned), never lost, and the
    waiter's request ends cancelled, not with a pool error."""
    queue: FairQueue[str] = FairQueue(maxsize=1)
    waiter = asyncio.create_task(greenlet_spawn(queue.get, True, 5.0))
    await asyncio.sleep(0.01)
    queue.put_nowait("handed")  # to the waiter, which has not run yet
    queue.put_nowait("returned")  # nobody waits: idle, and the queue is now full
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert sorted([queue.get_nowait(), queue.get_nowait()]) == ["handed", "returned"]


async def test_a_get_outside_a_greenlet_leaves_nobody_in_line() -> None:
    """A blocking get that cannot wait (called outside SQLAlchemy's greenlet) must not
    leave a waiter behind that would swallow the next connection returned."""
    queue: FairQueue[str] = FairQueue(maxsize=1)
    with pytest.raises(sa_exc.MissingGreenlet):
        queue.get(True, 1.0)
    queue.put_nowait("connection")
    assert queue.get_nowait() == "connection"


async def test_lifo_and_sizes_as_the_pool_expects() -> None:
    queue: FairQueue[int] = FairQueue(maxsize=2, use_lifo=True)
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert queue.full()
    assert queue.qsize() == 2
    assert queue.get_nowait() == 2  # the most recently used first, as pool_use_lifo asks
    assert queue.get(block=False) == 1
    assert queue.empty()
