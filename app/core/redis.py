"""Redis, optional by design: a cache and a rate limiter, never a reason to fail.

`OptionalRedis` wraps the client with a circuit breaker shared by everything that
uses Redis in this process. When Redis is down or silent, calls return None at
once (a cache miss, an unlimited request) instead of each waiting for a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from app.core.breaker import BreakerState, CircuitBreaker
from app.core.config import Settings
from app.core.metrics import breaker_opened

logger = structlog.get_logger(__name__)

# Keys whose delete could not reach Redis, kept in this worker's memory when Postgres
# could not keep them either (app/core/pending_deletes.py). Bounded: past it, the oldest
# are forgotten and those entries simply expire with their TTL.
MAX_PENDING_DELETES = 10_000
# After a failed send of the deletes kept in Postgres: not before this long, so a
# Postgres outage does not cost every successful Redis call a try. And a bound on the
# send: the calls behind it wait for it, and a silent Postgres must not hold them long.
KEPT_RETRY_SECONDS = 30.0
KEPT_SEND_TIMEOUT_SECONDS = 1.0
# While this worker holds missed deletes, it tries to send them this often on its own: a
# worker that missed a delete may get no other call for a long time, while another, whose
# breaker never opened, reads the stale entry from Redis as soon as it answers.
RESEND_SECONDS = 0.25


class KeptDeletes(Protocol):
    """Where missed deletes outlive the process: app/core/pending_deletes.py, Postgres.
    Both raise SQLAlchemyError or OSError when the store cannot be reached."""

    async def keep(self, keys: Sequence[str]) -> None: ...

    async def send(self, delete_in_redis: Callable[[list[str]], Awaitable[None]]) -> int: ...


class _RedisUnavailableError(RedisError):
    """A kept delete could not reach Redis: its batch stays kept, and the call that was
    sending it fails as Redis failures do."""


def create_redis_client(settings: Settings) -> Redis:
    """Short timeouts, no retries and a bounded pool: waiting for a free connection
    is bounded by the socket timeout too, so a saturated Redis is a failure, not a queue."""
    pool = BlockingConnectionPool.from_url(
        str(settings.redis_url),
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(NoBackoff(), retries=0),
    )
    # from_pool: the client owns the pool, so closing the client closes its connections.
    return Redis.from_pool(pool)


class OptionalRedis:
    """A Redis client that degrades: `run` returns None when Redis is unavailable."""

    def __init__(
        self, client: Redis, breaker: CircuitBreaker, kept: KeptDeletes | None = None
    ) -> None:
        self.client = client
        self.breaker = breaker
        self._scripts: dict[str, AsyncScript] = {}
        self._kept = kept
        # Deletes kept in Postgres may be waiting: a process that ended during an outage
        # left them (so, at start), or any worker during one (so, once one is seen).
        self._kept_waiting = kept is not None
        self._kept_not_before = 0.0
        self._pending_deletes: dict[str, None] = {}  # an ordered set
        self._sending = asyncio.Lock()
        self._resender: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None  # the half-open probe (run)
        # Told the keys whose missed delete was just sent (the near cache announces them
        # again: a copy taken from Redis meanwhile must go too).
        self.on_resent: Callable[..., None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, kept: KeptDeletes | None = None) -> OptionalRedis:
        breaker = CircuitBreaker(
            failures=settings.redis_breaker_failures, cooldown=settings.redis_breaker_cooldown
        )
        return cls(create_redis_client(settings), breaker, kept)

    @property
    def state(self) -> BreakerState:
        return self.breaker.state

    def script(self, source: str) -> AsyncScript:
        """`source` as a Lua script sent by SHA (EVALSHA), made once per client."""
        if source not in self._scripts:
            self._scripts[source] = self.client.register_script(source)
        return self._scripts[source]

    async def run[T](self, operation: Callable[[Redis], Awaitable[T]]) -> T | None:
        """Run `operation` on the client, or skip it (None) while the breaker is open."""
        was_closed = self.breaker.state is BreakerState.CLOSED
        if not self.breaker.allow():
            return None
        if not was_closed:
            # This call would be the half-open probe. A request must not pay for it (a
            # silent Redis costs the probe its full socket timeout, every cool-down, in
            # each worker): the probe is a PING of its own, and this call skips Redis.
            self._probe = asyncio.create_task(self._probe_once())
            return None
        return await self._call(operation)

    async def _probe_once(self) -> None:
        """The half-open probe: a PING, after the missed deletes (`_call` sends them
        first). Whatever else goes wrong counts as a failure too: the breaker never stays
        half-open with no probe under way."""
        try:
            await self._call(lambda redis: redis.ping())
        except Exception as exc:
            self.breaker.record_failure()
            logger.warning("redis probe failed", error=repr(exc))

    async def _call[T](self, operation: Callable[[Redis], Awaitable[T]]) -> T | None:
        try:
            if self._deletes_due():
                await self._send_waiting_deletes()
            result = await operation(self.client)
        except (RedisError, OSError) as exc:
            # Log transitions, not every skipped call: an outage must not flood the log.
            if self.breaker.record_failure():
                breaker_opened()
                logger.warning("redis unavailable; skipping it", error=type(exc).__name__)
                self._kept_waiting = self._kept is not None
            return None
        if self.breaker.state is not BreakerState.CLOSED:
            logger.info("redis available again")
        self.breaker.record_success()
        return result

    @property
    def pending_deletes(self) -> int:
        """Deletes waiting for Redis to answer again."""
        return len(self._pending_deletes)

    async def delete(self, *keys: str) -> bool:
        """Delete `keys` now or, if Redis is unavailable, as soon as it answers again: a
        cached copy of data that changed during an outage (a paused Redis keeps its data)
        must not be served for the rest of its TTL afterwards. Kept in Postgres, which
        outlives this process; in memory if Postgres fails too. True if deleted now (not
        when this call is the one that starts the breaker's probe: kept, then sent)."""
        if await self.run(lambda redis: redis.delete(*keys)) is not None:
            return True
        if self._kept is not None:
            try:
                await self._kept.keep(keys)
            except (SQLAlchemyError, OSError) as exc:
                logger.warning("cache delete kept in memory only", error=type(exc).__name__)
            else:
                self._kept_waiting = True
                self._resend_until_sent()
                return False
        self._defer(keys)
        self._resend_until_sent()
        return False

    def _resend_until_sent(self) -> None:
        if self._resender is None or self._resender.done():
            self._resender = asyncio.create_task(self._resend())

    async def _resend(self) -> None:
        """Send the missed deletes once Redis answers, without waiting for this worker's
        next call: a ping sends them (`run`), or starts the breaker's probe, which does."""
        while self._pending_deletes or self._kept_waiting:
            # Only deletes kept in Postgres, which failed the last send: not before it
            # may be tried again.
            wait = 0.0 if self._pending_deletes else self._kept_not_before - time.monotonic()
            await asyncio.sleep(max(RESEND_SECONDS, wait))
            try:
                await self.run(lambda redis: redis.ping())
            except Exception as exc:  # whatever it was, try again later
                logger.warning("cache deletes not sent; trying again", error=repr(exc))

    def _defer(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._pending_deletes[key] = None
        while len(self._pending_deletes) > MAX_PENDING_DELETES:
            del self._pending_deletes[next(iter(self._pending_deletes))]

    def _deletes_due(self) -> bool:
        kept_due = self._kept_waiting and time.monotonic() >= self._kept_not_before
        return kept_due or bool(self._pending_deletes)

    async def _send_waiting_deletes(self) -> None:
        """Before anything else is asked of Redis: an entry that changed while it was
        unavailable must not be read first. One sender; calls behind it wait for it."""
        async with self._sending:
            if self._pending_deletes:
                keys = list(self._pending_deletes)
                await self.client.delete(*keys)  # raises: they stay waiting
                for key in keys:
                    self._pending_deletes.pop(key, None)
                self._resent(keys)
                logger.info("deleted entries changed while redis was unavailable", count=len(keys))
            if self._kept is None or not self._deletes_due():
                return
            self._kept_waiting = False  # before: a delete kept meanwhile sets it again

            async def delete_in_redis(keys: list[str]) -> None:
                try:
                    await self.client.delete(*keys)
                except (RedisError, OSError) as exc:
                    self._kept_waiting = True
                    raise _RedisUnavailableError(str(exc)) from exc
                self._resent(keys)

            try:
                async with asyncio.timeout(KEPT_SEND_TIMEOUT_SECONDS):
                    sent = await self._kept.send(delete_in_redis)
            except (SQLAlchemyError, OSError, TimeoutError) as exc:
                # Postgres, not Redis: the call goes on, and the send is tried again later.
                self._kept_waiting = True
                self._kept_not_before = time.monotonic() + KEPT_RETRY_SECONDS
                logger.warning("cache deletes kept in postgres not sent", error=type(exc).__name__)
                return
            if sent:
                logger.info("deleted entries changed while redis was unavailable", count=sent)

    def _resent(self, keys: list[str]) -> None:
        if self.on_resent is not None:
            self.on_resent(*keys)

    async def aclose(self) -> None:
        for task in (self._probe, self._resender):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.client.aclose()
