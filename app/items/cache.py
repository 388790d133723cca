"""Cache-aside for single items. Redis errors are logged and treated as a miss:
the cache makes reads faster, never makes them fail."""

from __future__ import annotations

import uuid

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.items.schemas import ItemRead

logger = structlog.get_logger(__name__)


def cache_key(item_id: uuid.UUID) -> str:
    return f"items:v1:{item_id}"  # bump v1 when ItemRead's shape changes


class ItemCache:
    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    async def get(self, item_id: uuid.UUID) -> ItemRead | None:
        try:
            cached = await self._redis.get(cache_key(item_id))
        except RedisError as exc:
            logger.warning("item cache read skipped", error=type(exc).__name__)
            return None
        return ItemRead.model_validate_json(cached) if cached is not None else None

    async def set(self, item: ItemRead) -> None:
        try:
            await self._redis.set(cache_key(item.id), item.model_dump_json(), ex=self._ttl)
        except RedisError as exc:
            logger.warning("item cache write skipped", error=type(exc).__name__)

    async def invalidate(self, item_id: uuid.UUID) -> None:
        try:
            await self._redis.delete(cache_key(item_id))
        except RedisError as exc:
            # The entry, if any, expires after the TTL.
            logger.warning("item cache invalidation failed", error=type(exc).__name__)
