"""A per-client fixed-window rate limit kept in Redis, for write endpoints.

A fixed window (INCR plus EXPIRE) is one round trip and easy to reason about; it
lets a client burst up to twice the limit across a window boundary, which is
acceptable for protecting writes. When Redis is unavailable the limit fails open:
writes keep working, and a warning is logged.
"""

from __future__ import annotations

from http import HTTPStatus

import structlog
from fastapi import Request
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.core.errors import AppError

logger = structlog.get_logger(__name__)


class RateLimited(AppError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many write requests; retry in {retry_after} s.")
        self.headers = {"Retry-After": str(retry_after)}


async def hit(redis: Redis, key: str, limit: int, window_seconds: int) -> int | None:
    """Count one request against `key`. Returns the seconds to wait if over the limit."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        # NX: the window starts at its first request and is not extended by later ones.
        pipe.expire(key, window_seconds, nx=True)
        pipe.ttl(key)
        count, _, ttl = await pipe.execute()
    if count > limit:
        return max(int(ttl), 1)
    return None


def client_key(request: Request) -> str:
    # Behind the proxy, uvicorn's proxy-headers support has already set the real client.
    return request.client.host if request.client else "unknown"


async def limit_writes(request: Request) -> None:
    """Dependency for write endpoints: 429 with Retry-After past the configured rate."""
    settings = request.state.settings
    if settings.rate_limit_writes == 0:
        return
    key = f"ratelimit:writes:{client_key(request)}"
    try:
        retry_after = await hit(
            request.state.redis, key, settings.rate_limit_writes, settings.rate_limit_window_seconds
        )
    except RedisError as exc:
        logger.warning("rate limit skipped: redis unavailable", error=type(exc).__name__)
        return
    if retry_after is not None:
        raise RateLimited(retry_after)
