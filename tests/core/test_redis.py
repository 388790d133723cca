"""OptionalRedis against real faults: nothing listening, and a server that accepts
connections but never answers (what `docker pause` looks like to a client)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.breaker import BreakerState
from app.core.config import Settings
from app.core.db import create_engine
from app.core.pending_deletes import PendingDeletes
from app.core.redis import (
    KEPT_SEND_TIMEOUT_SECONDS,
    MAX_PENDING_DELETES,
    RESEND_SECONDS,
    OptionalRedis,
)
from tests.conftest import UNREACHABLE_POSTGRES, UNREACHABLE_REDIS, until, with_overrides


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A TCP server that reads requests and never replies; yields its redis:// URL."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(1024):
            pass
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"redis://127.0.0.1:{port}/0"
    server.close()


async def ping(client: Redis) -> bool:
    return bool(await client.ping())


async def timed_calls(redis: OptionalRedis, count: int) -> list[float]:
    durations = []
    for _ in range(count):
        started = time.perf_counter()
        assert await redis.run(ping) is None
        durations.append(time.perf_counter() - started)
    return durations


async def test_silent_redis_opens_the_breaker_and_is_then_skipped(
    settings: Settings, silent_server: str
) -> None:
    timeout = 0.5  # well above a busy machine's stalls: a call that waited for it shows
    redis = OptionalRedis.from_settings(
        with_overrides(settings, redis_url=silent_server, redis_socket_timeout=timeout)
    )
    durations = await timed_calls(redis, 10)
    await redis.aclose()
    # The first failures each cost a timeout; once open, a call costs microseconds (a
    # fifth of the timeout leaves room for a loaded machine, and for no wait for it).
    failures = settings.redis_breaker_failures
    assert all(d >= timeout * 0.9 for d in durations[:failures]), durations
    assert all(d < timeout / 5 for d in durations[failures:]), durations
    assert redis.state is BreakerState.OPEN


async def test_redis_down_is_skipped_and_comes_back(settings: Settings) -> None:
    redis = OptionalRedis.from_settings(
        with_overrides(settings, redis_url=UNREACHABLE_REDIS, redis_breaker_cooldown=0.1)
    )
    await timed_calls(redis, 5)
    assert redis.state is BreakerState.OPEN
    await redis.aclose()
    # Pointed at a live Redis (as when it restarts), the probe after the cool-down closes it.
    # The probe is a PING of its own: the call that finds the cool-down over skips Redis,
    # so no request waits out a silent Redis's timeout once per cool-down.
    live = OptionalRedis(Redis.from_url(str(settings.redis_url)), redis.breaker)
    await asyncio.sleep(0.15)
    assert await live.run(ping) is None
    await until(lambda: live.state is BreakerState.CLOSED)
    assert await live.run(ping) is True
    await live.aclose()


async def test_no_request_waits_for_the_probe_of_a_silent_redis(
    settings: Settings, silent_server: str
) -> None:
    """Once the cool-down is over, the call that finds it over starts the probe and
    skips Redis: a paused Redis costs the probe its timeout, not a client's request."""
    redis = OptionalRedis.from_settings(
        with_overrides(
            settings,
            redis_url=silent_server,
            redis_socket_timeout=0.5,
            redis_breaker_failures=1,
            redis_breaker_cooldown=1.0,  # room for a busy machine between the steps
        )
    )
    await timed_calls(redis, 1)  # a timeout: the breaker opens
    states = [redis.state]
    await asyncio.sleep(1.05)
    durations = await timed_calls(redis, 3)  # the first starts the probe
    assert all(d < 0.25 for d in durations), durations  # half the timeout: none waited
    states.append(redis.state)
    assert states == [BreakerState.OPEN, BreakerState.HALF_OPEN]
    # The probe times out on its own and opens the breaker again.
    await until(lambda: redis.state is BreakerState.OPEN)
    await redis.aclose()


async def test_a_delete_redis_missed_happens_once_it_answers_again(
    settings: Settings, redis: Redis
) -> None:
    """A paused Redis keeps its data: an entry whose delete was skipped during the outage
    would be served, stale, for the rest of its TTL. It is deleted when Redis is back."""
    client = OptionalRedis.from_settings(settings)
    await redis.set("cache:changed", b"old")
    for _ in range(settings.redis_breaker_failures):  # what an outage leaves behind
        client.breaker.record_failure()
    assert client.state is BreakerState.OPEN
    await client.delete("cache:changed")
    assert await redis.get("cache:changed") == b"old"  # skipped, remembered
    assert client.pending_deletes == 1

    client.breaker.record_success()  # the cool-down is over and a probe got through
    # The next call sends the deletes first: it cannot read the old entry.
    assert await client.run(lambda redis: redis.get("cache:changed")) is None
    assert client.pending_deletes == 0
    await client.aclose()


async def kept_in_postgres(engine: AsyncEngine, key: str) -> int:
    async with engine.connect() as connection:
        query = text("SELECT count(*) FROM pending_cache_deletes WHERE key = :key")
        return int(await connection.scalar(query, {"key": key}) or 0)


def in_an_outage(client: OptionalRedis, settings: Settings) -> OptionalRedis:
    for _ in range(settings.redis_breaker_failures):
        client.breaker.record_failure()
    assert client.state is BreakerState.OPEN
    return client


async def test_a_delete_redis_missed_outlives_the_process_that_missed_it(
    settings: Settings, redis: Redis, engine: AsyncEngine
) -> None:
    """A deploy or a restart during the outage ends the process that missed the delete:
    Postgres keeps it, and the next process to reach Redis sends it."""
    key = "cache:changed-then-restarted"
    await redis.set(key, b"old")
    first = in_an_outage(OptionalRedis.from_settings(settings, PendingDeletes(engine)), settings)
    await first.delete(key)
    assert first.pending_deletes == 0  # not in this process's memory
    await first.aclose()
    assert await kept_in_postgres(engine, key) == 1
    assert await redis.get(key) == b"old"

    second = OptionalRedis.from_settings(settings, PendingDeletes(engine))
    # Sent before its first call is: a read could not get the old entry first.
    assert await second.run(lambda client: client.get(key)) is None
    assert await kept_in_postgres(engine, key) == 0
    await second.aclose()


async def test_a_missed_delete_is_sent_without_waiting_for_the_next_call(
    settings: Settings, redis: Redis, engine: AsyncEngine
) -> None:
    """The worker that missed a delete may get no other call for minutes, while another,
    whose breaker never opened, reads the entry as soon as Redis answers: the missed
    delete is sent on its own once Redis answers, within a few RESEND_SECONDS."""
    key = "cache:changed-on-an-idle-worker"
    await redis.set(key, b"old")
    reader = OptionalRedis.from_settings(settings, PendingDeletes(engine))
    await reader.run(lambda client: client.ping())  # its start-up send is done
    quick = with_overrides(settings, redis_breaker_cooldown=0.1)
    writer = in_an_outage(OptionalRedis.from_settings(quick, PendingDeletes(engine)), quick)
    resent: list[str] = []  # what the near cache, when on, announces again
    writer.on_resent = lambda *keys: resent.extend(keys)
    assert await writer.delete(key) is False  # kept; then the writer gets no other call
    assert await kept_in_postgres(engine, key) == 1

    await asyncio.sleep(0.1 + 4 * RESEND_SECONDS)
    assert await reader.run(lambda client: client.get(key)) is None
    assert await kept_in_postgres(engine, key) == 0
    assert resent == [key]
    await writer.aclose()
    await reader.aclose()


async def test_a_missed_delete_postgres_cannot_keep_is_kept_in_memory(
    settings: Settings, redis: Redis
) -> None:
    key = "cache:changed-in-a-double-outage"
    await redis.set(key, b"old")
    down = create_engine(with_overrides(settings, database_url=UNREACHABLE_POSTGRES))
    client = in_an_outage(OptionalRedis.from_settings(settings, PendingDeletes(down)), settings)
    await client.delete(key)
    assert client.pending_deletes == 1
    client.breaker.record_success()  # Redis is back, Postgres still is not
    assert await client.run(lambda redis: redis.get(key)) is None  # sent first
    assert client.pending_deletes == 0
    await client.aclose()
    await down.dispose()


async def test_a_silent_postgres_holds_redis_calls_no_longer_than_the_send_bound(
    settings: Settings, silent_server: str
) -> None:
    """The calls behind a send of kept deletes wait for it: a Postgres that accepts the
    connection and never answers must not hold them past KEPT_SEND_TIMEOUT_SECONDS."""
    silent = silent_server.replace("redis://", "postgresql://app:app@").rsplit("/", 1)[0] + "/app"
    stalled = create_engine(with_overrides(settings, database_url=silent, db_connect_timeout=30.0))
    client = OptionalRedis.from_settings(settings, PendingDeletes(stalled))
    started = time.perf_counter()
    assert await client.run(ping) is True  # at start, it looks for kept deletes first
    assert time.perf_counter() - started < KEPT_SEND_TIMEOUT_SECONDS + 0.5
    started = time.perf_counter()
    assert await client.run(ping) is True  # and then not again for a while
    assert time.perf_counter() - started < 0.2
    await client.aclose()
    await stalled.dispose()


async def test_deletes_kept_for_later_are_bounded(settings: Settings) -> None:
    client = OptionalRedis.from_settings(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    keys = [f"cache:{n}" for n in range(MAX_PENDING_DELETES + 5)]
    for key in keys:
        client.breaker.record_failure()
        await client.delete(key)
    assert client.pending_deletes == MAX_PENDING_DELETES  # the oldest forgotten first
    await client.aclose()
