"""A connection pool that serves waiting requests in the order they came.

SQLAlchemy's asyncio pool hands connections out through an `asyncio.Queue`, and a
request that finds a connection in the queue takes it at once, even while others are
waiting. A returned connection wakes the longest waiter, but a request that arrives
before that waiter runs takes the connection first; the waiter goes back to the end
of the line. Under load (more requests in flight than connections, which a saturated
worker always has) some requests lose that race again and again: with 64 clients on
2 workers x 10 connections, the page of items answered its median request in 30 ms
and its 99th percentile in 1.1-1.3 s, and in production, where a request waits at most
DB_POOL_TIMEOUT (1 s) for a connection, those requests were shed as 503 while the
median wait was a few milliseconds. asyncpg's own pool has the same flaw
(MagicStack/asyncpg#1247).

`FairQueue` hands a returned connection directly to the longest waiter, and lets a
new request take one only when nobody is waiting: first come, first served. The
pool's sizing, overflow, timeout and LIFO settings are unchanged (docs/benchmarks.md
has the figures).
"""

from __future__ import annotations

import asyncio
from collections import deque

from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util.concurrency import await_
from sqlalchemy.util.queue import Empty, Full, QueueCommon


class FairQueue[T](QueueCommon[T]):
    """The pool's idle connections, and its waiters in arrival order. Both are never
    non-empty at once: a connection returned while someone waits goes to that waiter."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._idle: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T]] = deque()

    def empty(self) -> bool:
        return not self._idle

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._idle)

    def qsize(self) -> int:
        return len(self._idle)

    def put_nowait(self, item: T) -> None:
        if not self._hand_to_waiter(item):
            if self.full():
                raise Full  # the pool closes the connection (an overflow one)
            self._idle.append(item)

    def _hand_to_waiter(self, item: T) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that gave up is skipped
                waiter.set_result(item)
                return True
        return False

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        # The pool never holds more connections than its size, so a put never waits.
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._idle:
            raise Empty
        return self._idle.pop() if self.use_lifo else self._idle.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        """Called by the pool inside SQLAlchemy's greenlet, hence `await_`."""
        if self._idle or not block:
            return self.get_nowait()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        try:
            return await_(self._wait(waiter, asyncio.timeout(timeout)))
        except TimeoutError:
            raise Empty from None  # the pool turns it into its own TimeoutError

    async def _wait(self, waiter: asyncio.Future[T], limit: asyncio.Timeout) -> T:
        # Queued here, not in get(): if await_ cannot run this (no greenlet), no waiter
        # is left in line to swallow the next connection.
        self._waiters.append(waiter)
        try:
            async with limit:
                return await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return waiter.result()  # handed one just as the wait ran out: take it
            self._forget(waiter)
            raise
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # Handed a connection in the instant its request was cancelled: pass it
                # on. Past the size check: the pool counted it as checked out, and
                # closes the extra one on a later return if the pool is then full.
                if not self._hand_to_waiter(waiter.result()):
                    self._idle.append(waiter.result())
            else:
                self._forget(waiter)
            raise

    def _forget(self, waiter: asyncio.Future[T]) -> None:
        waiter.cancel()
        if waiter in self._waiters:
            self._waiters.remove(waiter)


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio pool, first come first served (`create_async_engine(...,
    poolclass=FairAsyncQueuePool)`)."""

    _queue_class = FairQueue[ConnectionPoolEntry]
