"""The Redis client: built in the lifespan, one per process, and its dependency."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.core.config import Settings


def create_redis(settings: Settings) -> Redis:
    """A client with short timeouts and no retries: Redis is a cache and a limiter here,
    so a slow or absent Redis must cost a request milliseconds, not seconds."""
    return Redis.from_url(
        str(settings.redis_url),
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(NoBackoff(), retries=0),
        decode_responses=True,
    )


def get_redis(request: Request) -> Redis:
    redis: Redis = request.state.redis
    return redis


RedisDep = Annotated[Redis, Depends(get_redis)]
