"""A typed read-through cache of one resource's response bodies in Redis.

Correct under concurrent writes: a reader that misses takes a lease (a unique
token, SET NX) *before* it reads the database, and stores the row only if its
lease is still there. Writers delete the key after their commit
(`invalidate_on_commit`), which also deletes any lease, so a reader holding a
row read before the write cannot put it back: a deleted item is never served
from the cache, an updated one never reverts.

Entries are the response's JSON bytes, keyed by resource and by a fingerprint of
the response schema: a hit is returned as stored (no parse, no re-validation),
and a deploy that changes the schema starts from empty keys instead of serving
bodies of the old shape. Redis being down makes every read a miss (see
OptionalRedis), never an error.

With the near cache turned on (CACHE_LOCAL_TTL_SECONDS > 0, app/core/near_cache.py),
each worker also keeps the bodies it read last, and a writer's invalidation reaches
every worker by Postgres NOTIFY, sent in the writer's own transaction.

The recipe, for a resource `widgets` (the template's app/items is a worked example):

    # app/widgets/cache.py
    get_widget_cache = model_cache_provider("widgets", WidgetRead)
    WidgetCacheDep = Annotated[ModelCache[WidgetRead], Depends(get_widget_cache)]

    # service: reads through the cache (a session opened on a miss only), and writes
    # invalidate it when they commit
    async def load() -> WidgetRead:
        async with read_session(sessions) as session:  # sessions: ReadSessionFactoryDep
            return WidgetRead.model_validate(await get_widget(session, widget_id))
    body = await cache.get_or_load(widget_id, load)  # JSON bytes: Response(body, ...)
    await cache.invalidate_on_commit(session, widget_id)  # in update and delete
"""

from __future__ import annotations

import functools
import hashlib
import json
import secrets
import weakref
from collections.abc import Awaitable, Callable

from fastapi import Request
from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import after_commit
from app.core.metrics import cache_counters
from app.core.near_cache import CHANNEL, NearCache
from app.core.redis import OptionalRedis
from app.core.state import app_state

_LEASE_PREFIX = b"lease:"
# One round trip for a read: the entry (or another reader's lease), or, when there is
# none, our own lease, taken at once and returned to say so.
#
# Both scripts begin with `#!lua` and declare no flags: Redis then takes them for scripts
# that write, and a Redis that refuses writes (a replica after a failover: READONLY)
# refuses them whole, hit or miss. Without it, a hit was still served there while the
# writers' invalidations failed: an entry their commits changed, until its TTL.
_GET_OR_LEASE = """#!lua
local value = redis.call('GET', KEYS[1])
if value then return value end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""
# Store the body only if our lease is still the key's value (no write or other fill since).
_FILL_IF_LEASED = """#!lua
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
        near: NearCache | None = None,
    ) -> None:
        self._redis = redis
        self._near = near
        self._model = model
        self._ttl = ttl_seconds
        self._lease_seconds = lease_seconds
        self._prefix = f"cache:{resource}:{schema_fingerprint(model)}:"
        # Sent by SHA (EVALSHA); redis-py loads them on first use.
        self._get_or_lease = redis.script(_GET_OR_LEASE)
        self._fill_if_leased = redis.script(_FILL_IF_LEASED)
        self._hits, self._misses = cache_counters(resource)

    def key(self, entity_id: object) -> str:
        return f"{self._prefix}{entity_id}"

    async def get_or_load(self, entity_id: object, load: Callable[[], Awaitable[Model]]) -> bytes:
        """The body for `entity_id`: from the cache, else from `load()` (whose errors,
        such as not found, propagate and are not cached), filling the cache."""
        key = self.key(entity_id)
        near = self._near
        if near is not None and (body := near.get(key)) is not None:
            self._hits.inc()
            return body
        # Noted before Redis is asked: an invalidation meanwhile voids what it returns.
        generation = near.generation if near is not None else 0
        lease = _LEASE_PREFIX + secrets.token_hex(8).encode()
        found = await self._redis.run(
            lambda _: self._get_or_lease(keys=[key], args=[lease, self._lease_seconds])
        )
        if isinstance(found, bytes) and not found.startswith(_LEASE_PREFIX):
            self._hits.inc()
            if near is not None:
                near.put(key, found, generation)
            return found
        # A miss: our lease (we fill), another reader's (it fills), or Redis skipped
        # (down, breaker open: None, and nothing more is asked of it).
        self._misses.inc()
        body = (await load()).model_dump_json().encode()
        if found == lease:
            await self._redis.run(
                lambda _: self._fill_if_leased(keys=[key], args=[lease, body, self._ttl])
            )
        if near is not None:
            # Also while Redis is down: the copy is dropped by NOTIFY like any other.
            near.put(key, body, generation)
        return body

    async def invalidate(self, entity_id: object) -> None:
        """Drop the Redis entry (and, with the near cache on, this worker's copy, and
        every worker's again once the entry is gone: NearCache.announce)."""
        key = self.key(entity_id)
        if self._near is not None:
            self._near.evict(key)
        # A delete kept for later is announced when it is sent (OptionalRedis.on_resent).
        if await self._redis.delete(key) and self._near is not None:
            self._near.announce(key)

    async def invalidate_on_commit(self, session: AsyncSession, entity_id: object) -> None:
        """Call in the transaction that changes the entity: the Redis entry is deleted
        after the commit. Before it would be too early: a concurrent reader could still
        load and cache the old row. With the near cache on, every worker's copy is
        dropped by a NOTIFY sent in this transaction (nothing is sent if it rolls back)."""
        if self._near is not None:
            await session.execute(select(func.pg_notify(CHANNEL, self.key(entity_id))))
        after_commit(session, lambda: self.invalidate(entity_id))


def model_cache_provider[Model: BaseModel](
    resource: str, model: type[Model], *, ttl_seconds: int | None = None
) -> Callable[[Request], Awaitable[ModelCache[Model]]]:
    """A dependency giving `resource`'s cache, made once per worker from the app's
    Redis client, near cache (if on) and settings (CACHE_TTL_SECONDS unless `ttl_seconds`).

        get_widget_cache = model_cache_provider("widgets", WidgetRead)
        WidgetCacheDep = Annotated[ModelCache[WidgetRead], Depends(get_widget_cache)]
    """
    # Keyed by the worker's Redis client: one cache per app, even with several apps
    # in one process (the tests).
    made: weakref.WeakKeyDictionary[OptionalRedis, ModelCache[Model]] = weakref.WeakKeyDictionary()

    async def provide(request: Request) -> ModelCache[Model]:
        state = app_state(request)
        redis = state["redis"]
        cache = made.get(redis)
        if cache is None:
            ttl = ttl_seconds or state["settings"].cache_ttl_seconds
            cache = ModelCache(
                redis,
                resource=resource,
                model=model,
                ttl_seconds=ttl,
                near=state["near_cache"],
            )
            made[redis] = cache
        return cache

    return provide
