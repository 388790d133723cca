"""Redis, optional by design: a cache and a rate limiter, never a reason to fail.

`OptionalRedis` wraps the client with a circuit breaker shared by everything that
uses Redis in this process. When Redis is down or silent, calls return None at
once (a cache miss, an unlimited request) instead of each waiting for a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

import structlog
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from app.core.breaker import BreakerState, CircuitBreaker
from app.core.config import Settings
from app.core.metrics import breaker_opened

logger = structlog.get_logger(__name__)

# Keys whose delete could not reach Redis, kept to delete once it answers again. Bounded:
# past it, the oldest are forgotten and those entries simply expire with their TTL.
MAX_PENDING_DELETES = 10_000


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

    def __init__(self, client: Redis, breaker: CircuitBreaker) -> None:
        self.client = client
        self.breaker = breaker
        self._scripts: dict[str, AsyncScript] = {}
        self._pending_deletes: dict[str, None] = {}  # an ordered set
        self._retrying: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OptionalRedis:
        breaker = CircuitBreaker(
            failures=settings.redis_breaker_failures, cooldown=settings.redis_breaker_cooldown
        )
        return cls(create_redis_client(settings), breaker)

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
        if not self.breaker.allow():
            return None
        try:
            result = await operation(self.client)
        except (RedisError, OSError) as exc:
            # Log transitions, not every skipped call: an outage must not flood the log.
            if self.breaker.record_failure():
                breaker_opened()
                logger.warning("redis unavailable; skipping it", error=type(exc).__name__)
            return None
        if self.breaker.state is not BreakerState.CLOSED:
            logger.info("redis available again")
        self.breaker.record_success()
        if self._pending_deletes and self._retrying is None:
            self._retrying = asyncio.create_task(self._delete_pending())
        return result

    @property
    def pending_deletes(self) -> int:
        """Deletes waiting for Redis to answer again."""
        return len(self._pending_deletes)

    async def delete(self, *keys: str) -> None:
        """Delete `keys` now or, if Redis is unavailable, as soon as it answers again: a
        cached copy of data that changed during an outage (a paused Redis keeps its data)
        must not be served for the rest of its TTL afterwards."""
        if await self.run(lambda redis: redis.delete(*keys)) is None:
            self._defer(keys)

    def _defer(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._pending_deletes[key] = None
        while len(self._pending_deletes) > MAX_PENDING_DELETES:
            del self._pending_deletes[next(iter(self._pending_deletes))]

    async def _delete_pending(self) -> None:
        keys = list(self._pending_deletes)
        self._pending_deletes.clear()
        try:
            if await self.run(lambda redis: redis.delete(*keys)) is None:
                self._defer(keys)
            else:
                logger.info("deleted entries changed while redis was unavailable", count=len(keys))
        finally:
            self._retrying = None

    async def aclose(self) -> None:
        if self._retrying is not None:
            self._retrying.cancel()
        await self.client.aclose()
