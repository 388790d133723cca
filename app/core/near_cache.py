"""Opt-in (CACHE_LOCAL_TTL_SECONDS > 0): a worker's own copy of hot cache entries, kept
honest by Postgres LISTEN/NOTIFY. Off by default; docs/benchmarks.md has its gain and cost.

A Redis hit still costs a round trip. So each worker keeps the bodies it read last in
a dict, and drops one as
soon as any worker changes the row behind it: `ModelCache.invalidate_on_commit`
sends `NOTIFY` inside the writer's transaction, so Postgres delivers it to every
listening worker exactly when the change commits, and never when it rolls back.

The invalidations travel with the data, not through Redis: a Redis outage leaves
the copies correct (and serving, which is what keeps throughput up while Redis is
down). A copy is served only while the listener is known to be live: every
HEARTBEAT_SECONDS it notifies itself on a channel of its own, and copies are
trusted until TRUST_SECONDS after it sent the last heartbeat that came back.
Postgres delivers a listener's notifications in commit order, so a heartbeat back
means every invalidation committed before it has arrived; and it proves the LISTEN
is live end to end (behind a transaction-mode pooler such as PgBouncer it is not,
the heartbeat never comes back, and the copies stay off rather than going stale).
Postgres down, the connection lost, or any other error in the listener: the copies
are dropped and reads go to Redis, then to Postgres, while the listener reconnects
with backoff (logged once per outage; `app_near_cache_listener_live` says whether
each worker's listener is live). A copy also expires after `ttl` whatever happens.

The same guard as Redis's own client-side caching protects a fill racing an
invalidation: a body is stored only if no invalidation arrived since its read
began (`generation`). The commit's NOTIFY can arrive before the writer's Redis delete,
so a read in between would copy the old body from Redis: the writer announces the key
once more after that delete (`announce`), on its listener's connection.

Costs one Postgres connection per worker (the listener's), counted in the
connection budget, a heartbeat query every HEARTBEAT_SECONDS, and the second NOTIFY
of each invalidating write (in the background, after its response). NOTIFY takes a
database-wide lock at commit, so the transactions that invalidate commit one at a
time: fine for resources written far less often than read, not for a firehose of writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy

from app.core.config import Settings
from app.core.metrics import NEAR_CACHE_LISTENER_LIVE

logger = structlog.get_logger(__name__)

# Postgres channels are per database: two apps on one server never hear each other.
CHANNEL = "cache_invalidate"
HEARTBEAT_SECONDS = 0.25
TRUST_SECONDS = 1.0
# Reconnection backoff: doubles from HEARTBEAT_SECONDS up to this, reset once live.
MAX_BACKOFF_SECONDS = 1.0
# Repeated invalidations (`announce`): keys per statement, and at most this many waiting.
ANNOUNCE_BATCH = 500
MAX_ANNOUNCE = 10_000


class NearCache:
    """Bodies by cache key, trusted only while the invalidation listener is live."""

    def __init__(
        self,
        dsn: str,
        *,
        ttl_seconds: float,
        max_entries: int,
        connect_timeout: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dsn = dsn
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._entries: dict[str, tuple[float, bytes]] = {}
        self._trusted_until = 0.0
        self._listening = True  # log the first loss, then only transitions
        NEAR_CACHE_LISTENER_LIVE.set(0)
        # Bumped by every invalidation: a read that began before one must not store.
        self.generation = 0
        # The listener's connection, while it has one: `announce` sends on it too, one
        # statement at a time (asyncpg allows no more on a connection).
        self._connection: asyncpg.Connection[Any] | None = None
        self._statement = asyncio.Lock()
        # Keys to announce, sent together by one task: a burst of writes is a few
        # statements, not one each queued before the heartbeat.
        self._to_announce: dict[str, None] = {}  # an ordered set
        self._announcer: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> NearCache | None:
        """The near cache the settings ask for, or None when it is off (the default)."""
        if settings.cache_local_ttl_seconds <= 0 or settings.cache_local_max_entries <= 0:
            return None
        return cls(
            settings.postgres_dsn,
            ttl_seconds=settings.cache_local_ttl_seconds,
            max_entries=settings.cache_local_max_entries,
            connect_timeout=settings.db_connect_timeout,
        )

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
        invalidated since or the listener is not live."""
        if not self.enabled or generation != self.generation or not self.live:
            return
        if len(self._entries) >= self._max_entries and key not in self._entries:
            # The oldest first (dicts keep insertion order): cheap, and hot keys come back.
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (self._clock() + self._ttl, body)

    def evict(self, key: str) -> None:
        self.generation += 1
        self._entries.pop(key, None)

    def announce(self, *keys: str) -> None:
        """Invalidate `keys` on every worker again, once their Redis entries are gone.
        The commit's NOTIFY can reach a worker before the writer's Redis delete: a read
        in between finds the old body in Redis, after the invalidation, and would keep it
        until its TTL. Sent in the background, so the response does not wait for it; kept
        until this worker's listener is connected (at start, after a lost connection)."""
        if not self.enabled:
            return
        for key in keys:
            self._to_announce[key] = None
        while len(self._to_announce) > MAX_ANNOUNCE:  # past it, copies live to their TTL
            del self._to_announce[next(iter(self._to_announce))]
        self._start_announcer()

    def _start_announcer(self) -> None:
        running = self._announcer is not None and not self._announcer.done()
        if self._connection is not None and self._to_announce and not running:
            self._announcer = asyncio.create_task(self._send_announcements())

    async def _send_announcements(self) -> None:
        while self._to_announce and (connection := self._connection) is not None:
            keys = list(itertools.islice(self._to_announce, ANNOUNCE_BATCH))
            for key in keys:
                del self._to_announce[key]
            try:
                async with self._statement:
                    await connection.execute(
                        "SELECT pg_notify($1, key) FROM unnest($2::text[]) AS key",
                        CHANNEL,
                        keys,
                        timeout=TRUST_SECONDS,
                    )
            except Exception as exc:  # the listener's own loop handles a lost connection
                # Lost with the connection: the copies are off until it reconnects anyway,
                # here; on other workers, one copied in that moment lives until its TTL.
                logger.debug("cache invalidations not repeated", error=repr(exc))

    def _forget_all(self) -> None:
        self.generation += 1
        self._entries.clear()

    def _distrust(self) -> None:
        self._trusted_until = 0.0
        self._forget_all()

    def _on_notification(
        self,
        _: asyncpg.Connection[Any] | PoolConnectionProxy[Any],
        __: int,
        ___: str,
        key: object,
    ) -> None:
        self.evict(str(key))

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
            for running in (task, self._announcer):
                if running is not None:
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await running

    async def _listen_forever(self) -> None:
        backoff = HEARTBEAT_SECONDS
        while True:
            try:
                await self._listen()
            except Exception as exc:  # whatever it was, the listener reconnects
                # An outage (OSError, a timeout, a server error) or not (asyncpg's own
                # InternalClientError under connection churn): copies off, try again.
                if self._listening:
                    logger.warning("cache invalidations lost; local copies off", error=repr(exc))
                    backoff = HEARTBEAT_SECONDS
                else:
                    backoff = min(2 * backoff, MAX_BACKOFF_SECONDS)
                self._listening = False
            self._distrust()
            NEAR_CACHE_LISTENER_LIVE.set(0)
            await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        connection: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            server_settings={"application_name": "near-cache-listener"},
        )
        # This listener's own channel: only its heartbeats travel on it.
        heartbeats = f"cache_heartbeat_{uuid.uuid4().hex}"
        arrived: asyncio.Queue[str] = asyncio.Queue()

        def on_heartbeat(_: object, __: int, ___: str, payload: object) -> None:
            arrived.put_nowait(str(payload))

        try:
            await connection.add_listener(CHANNEL, self._on_notification)
            await connection.add_listener(heartbeats, on_heartbeat)
            self._forget_all()  # whatever changed before we listened
            self._connection = connection
            self._start_announcer()  # what was announced while this worker was not connected
            for beat in itertools.count():
                sent_at = self._clock()
                async with self._statement:
                    await connection.execute(
                        "SELECT pg_notify($1, $2)", heartbeats, str(beat), timeout=TRUST_SECONDS
                    )
                async with asyncio.timeout(TRUST_SECONDS):
                    while await arrived.get() != str(beat):
                        pass
                # Every change committed before this heartbeat has reached us.
                self._trusted_until = sent_at + TRUST_SECONDS
                if not self._listening:
                    logger.info("cache invalidations live; local copies on")
                    self._listening = True
                NEAR_CACHE_LISTENER_LIVE.set(1)
                await asyncio.sleep(HEARTBEAT_SECONDS)
        finally:
            self._connection = None
            # A silent server must not hold the listener: close without waiting for it.
            connection.terminate()
