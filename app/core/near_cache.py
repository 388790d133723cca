"""A worker's own copy of hot cache entries, kept honest by Redis pub/sub.

A Redis hit still costs a round trip: more than the rest of a cached read put
together. So each worker keeps the bodies it read last in a dict, and drops one
as soon as any worker invalidates it: `ModelCache` deletes the Redis key and
publishes it on `invalidation_channel()` in one step, and every worker listens on that channel.

A local copy is served only while the subscription is known to be live: the
listener pings through it every HEARTBEAT_SECONDS, and a copy is trusted until
TRUST_SECONDS after the last ping Redis answered (Redis delivers a channel's
messages in order, so a pong proves nothing published before its ping was
missed). Redis down, paused, or the connection lost: the copies are dropped and
reads go back to Redis (then to the database) until the listener is back, so a
worker that misses an invalidation serves a stale body for about a second at
most. A copy also expires after `ttl` whatever happens.

The same guard as Redis's own client-side caching protects a fill racing an
invalidation: a body is stored only if no invalidation arrived since its read
began (`generation`).

Written here rather than with Redis's client tracking (RESP3 push messages):
redis-py's asyncio client does not support client-side caching, and plain
pub/sub works with any Redis (and with RESP2).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog
from redis.exceptions import RedisError

from app.core.redis import OptionalRedis

logger = structlog.get_logger(__name__)


def invalidation_channel(redis: OptionalRedis) -> str:
    """The channel invalidations travel on. Channels are server-wide, so it names the
    database number: two apps on one server with different databases stay apart."""
    database = redis.client.connection_pool.connection_kwargs.get("db", 0)
    return f"cache:invalidate:{database}"


HEARTBEAT_SECONDS = 0.25
TRUST_SECONDS = 1.0


class NearCache:
    """Bodies by cache key, trusted only while the invalidation channel is live."""

    def __init__(
        self,
        redis: OptionalRedis,
        *,
        ttl_seconds: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._channel = invalidation_channel(redis)
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._trusted_until = 0.0
        self._listening = True  # log the first loss, then only transitions
        # Bumped by every invalidation: a read that began before one must not store.
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return self._ttl > 0 and self._max_entries > 0

    @property
    def live(self) -> bool:
        """Whether local copies may be served now."""
        return self._clock() < self._trusted_until

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires_at, body = entry
        now = self._clock()
        if now >= self._trusted_until:
            self._forget_all()
            return None
        if now >= expires_at:
            del self._entries[key]
            return None
        return body

    def put(self, key: str, body: bytes, generation: int) -> None:
        """Keep `body`, read when `generation` was current, unless something was
        invalidated since or the channel is not live."""
        if not self.enabled or generation != self.generation or not self.live:
            return
        if len(self._entries) >= self._max_entries and key not in self._entries:
            # The oldest first (dicts keep insertion order): cheap, and hot keys come back.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + self._ttl, body)

    def evict(self, key: str) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def _forget_all(self) -> None:
        self.generation += 1
        self._entries.clear()

    def _distrust(self) -> None:
        self._trusted_until = 0.0
        self._forget_all()

    @contextlib.asynccontextmanager
    async def listening(self) -> AsyncIterator[None]:
        """Listen for invalidations in the background while the block runs (the app's
        lifespan). Without it, nothing is ever trusted and every read goes to Redis."""
        if not self.enabled:
            yield
            return
        task = asyncio.create_task(self._listen_forever(), name="near-cache-invalidations")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _listen_forever(self) -> None:
        while True:
            try:
                await self._listen()
            except (RedisError, OSError, TimeoutError) as exc:
                if self._listening:
                    logger.warning("cache invalidations lost; local copies off", error=repr(exc))
                self._listening = False
            except Exception:
                # A bug, not an outage: say so once and stop; with no listener nothing is
                # trusted, so reads simply go to Redis.
                self._distrust()
                logger.exception("cache invalidation listener failed; local copies off")
                return
            self._distrust()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _listen(self) -> None:
        async with self._redis.client.pubsub() as pubsub:
            # The question in flight (the subscription, then each ping) and when it left.
            asked_at: float | None = self._clock()
            answered_at = 0.0
            await pubsub.subscribe(self._channel)
            self._forget_all()  # whatever was published before this subscription
            while True:
                message: dict[str, Any] | None = await pubsub.get_message(timeout=HEARTBEAT_SECONDS)
                if message is not None and message["type"] == "message":
                    self.evict(message["data"].decode())
                    continue
                now = self._clock()
                if message is not None and asked_at is not None:  # "subscribe" or "pong"
                    # Everything published before the question left has reached us.
                    answered_at, asked_at = asked_at, None
                    self._trusted_until = answered_at + TRUST_SECONDS
                    if not self._listening:
                        logger.info("cache invalidations live; local copies on")
                        self._listening = True
                if asked_at is None and now - answered_at >= HEARTBEAT_SECONDS:
                    asked_at = now
                    await pubsub.ping()
                elif asked_at is not None and now - asked_at >= TRUST_SECONDS:
                    raise TimeoutError("Redis did not answer on the invalidation channel")
