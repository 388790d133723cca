"""A typed read-through cache of one resource's response bodies in Redis.

Correct under concurrent writes: a reader that misses takes a lease (a unique
token, SET NX) *before* it reads the database, and stores the row only if its
lease is still there. Writers delete the key after their commit
(`invalidate_after_commit`), which also deletes any lease, so a reader holding a
row read before the write cannot put it back: a deleted item is never served
from the cache, an updated one never reverts.

Entries are the response's JSON bytes, keyed by resource and by a fingerprint of
the response schema: a hit is returned as stored (no parse, no re-validation),
and a deploy that changes the schema starts from empty keys instead of serving
bodies of the old shape. Redis being down makes every read a miss (see
OptionalRedis), never an error.
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import after_commit
from app.core.metrics import cache_counters
from app.core.redis import OptionalRedis

_LEASE_PREFIX = b"lease:"
# Store the body only if our lease is still the key's value (no write or other fill since).
_FILL_IF_LEASED = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
end
return nil
"""


@functools.cache
def schema_fingerprint(model: type[BaseModel]) -> str:
    """Changes whenever the model's JSON schema does."""
    schema = json.dumps(model.model_json_schema(), sort_keys=True).encode()
    return hashlib.sha256(schema).hexdigest()[:12]


class ModelCache[Model: BaseModel]:
    """Caches `model`'s JSON by id for one resource (`items`, `orders`, …)."""

    def __init__(
        self,
        redis: OptionalRedis,
        *,
        resource: str,
        model: type[Model],
        ttl_seconds: int,
        lease_seconds: int = 5,
    ) -> None:
        self._redis = redis
        self._model = model
        self._ttl = ttl_seconds
        self._lease_seconds = lease_seconds
        self._prefix = f"cache:{resource}:{schema_fingerprint(model)}:"
        self._hits, self._misses = cache_counters(resource)

    def key(self, entity_id: object) -> str:
        return f"{self._prefix}{entity_id}"

    async def get_or_load(self, entity_id: object, load: Callable[[], Awaitable[Model]]) -> bytes:
        """The body for `entity_id`: from the cache, else from `load()` (whose errors,
        such as not found, propagate and are not cached), filling the cache."""
        key = self.key(entity_id)
        cached = await self._redis.run(lambda redis: redis.get(key))
        if isinstance(cached, bytes) and not cached.startswith(_LEASE_PREFIX):
            self._hits.inc()
            return cached
        self._misses.inc()  # Redis skipped (down, breaker open) counts as a miss too
        lease = _LEASE_PREFIX + secrets.token_hex(8).encode()
        leased = await self._redis.run(
            lambda redis: redis.set(key, lease, nx=True, ex=self._lease_seconds)
        )
        body = (await load()).model_dump_json().encode()
        if leased:
            await self._redis.run(lambda redis: self._fill(redis, key, lease, body))
        return body

    async def _fill(self, redis: Redis, key: str, lease: bytes, body: bytes) -> object:
        return await redis.eval(_FILL_IF_LEASED, 1, key, lease, body, self._ttl)

    async def invalidate(self, entity_id: object) -> None:
        key = self.key(entity_id)
        await self._redis.run(lambda redis: redis.delete(key))

    def invalidate_after_commit(self, session: AsyncSession, entity_id: object) -> None:
        """Drop the entry once `session` commits. Before the commit would be too early:
        a concurrent reader could still load and cache the old row."""
        after_commit(session, lambda: self.invalidate(entity_id))
