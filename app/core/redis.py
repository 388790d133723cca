"""Redis, optional by design: a cache and a rate limiter, never a reason to fail.

`OptionalRedis` wraps the client with a circuit breaker shared by everything that
uses Redis in this process. When Redis is down or silent, calls return None at
once (a cache miss, an unlimited request) instead of each waiting for a timeout.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

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
        return result

    async def aclose(self) -> None:
        await self.client.aclose()
