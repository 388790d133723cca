"""The near cache (opt-in) on a real Postgres and Redis: each "worker" here has its own
Redis client, near cache and listener, as two Gunicorn workers do. Local copies serve
hot reads; a committed change reaches every worker by NOTIFY (a rolled-back one never
does); a silent or lost listener turns the copies off until it reconnects, whatever
the error was; Redis being down does not."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack

import pytest
from prometheus_client import REGISTRY
from pydantic import BaseModel
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.cache import ModelCache
from app.core.config import Settings
from app.core.near_cache import HEARTBEAT_SECONDS, MAX_BACKOFF_SECONDS, TRUST_SECONDS, NearCache
from app.core.redis import OptionalRedis
from tests.conftest import UNREACHABLE_POSTGRES, UNREACHABLE_REDIS, with_overrides

# What a Postgres restart does to the listeners (only this database's: `make pytest` may
# share a server with a dev stack).
TERMINATE_LISTENERS = text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE application_name = 'near-cache-listener' AND datname = current_database()"
)


class Thing(BaseModel):
    id: uuid.UUID
    name: str


class Worker:
    """One process's view: its own Redis client, near cache and cache of things."""

    def __init__(self, settings: Settings, *, ttl_seconds: float = 60, max_entries: int = 100):
        self.redis = OptionalRedis.from_settings(settings)
        self.near = NearCache(
            settings.postgres_dsn, ttl_seconds=ttl_seconds, max_entries=max_entries
        )
        self.cache = ModelCache(
            self.redis, resource="things", model=Thing, ttl_seconds=60, near=self.near
        )
        self.loads = 0

    def loader(self, thing: Thing) -> Callable[[], Awaitable[Thing]]:
        async def load() -> Thing:
            self.loads += 1
            return thing

        return load

    async def read(self, thing: Thing) -> Thing:
        return Thing.model_validate_json(await self.cache.get_or_load(thing.id, self.loader(thing)))


WorkerMaker = Callable[..., Awaitable[Worker]]


async def change(engine: AsyncEngine, worker: Worker, thing_id: uuid.UUID) -> None:
    """What a writer does: invalidate in its transaction, commit, then run the
    after-commit hook (SessionDep runs it in the app)."""
    async with AsyncSession(engine) as session, session.begin():
        await worker.cache.invalidate_on_commit(session, thing_id)
    await worker.cache.invalidate(thing_id)


async def until(condition: Callable[[], bool], seconds: float = 2 * TRUST_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def start_worker(redis: Redis) -> AsyncIterator[WorkerMaker]:
    """start_worker(settings, ...): a worker whose listener runs until the test ends.
    (`redis`: the tests' Redis database, emptied of the workers' entries afterwards.)"""
    async with AsyncExitStack() as stack:

        async def start(
            settings: Settings,
            *,
            listen: bool = True,
            ttl_seconds: float = 60,
            max_entries: int = 100,
        ) -> Worker:
            worker = Worker(settings, ttl_seconds=ttl_seconds, max_entries=max_entries)
            stack.push_async_callback(worker.redis.aclose)
            if listen:
                await stack.enter_async_context(worker.near.listening())
                await until(lambda: worker.near.live)
            return worker

        yield start


async def test_a_hot_read_is_served_locally_without_redis(
    start_worker: WorkerMaker, settings: Settings, redis: Redis
) -> None:
    worker = await start_worker(settings)
    thing = Thing(id=uuid.uuid4(), name="hot")
    await worker.read(thing)  # miss: loaded, stored in Redis and locally
    # Behind the cache's back, so no invalidation is published: only the copy is left.
    await redis.delete(worker.cache.key(thing.id))
    assert await worker.read(thing) == thing
    assert worker.loads == 1


async def test_a_redis_hit_is_kept_locally(
    start_worker: WorkerMaker, settings: Settings, redis: Redis
) -> None:
    one, two = await start_worker(settings), await start_worker(settings)
    thing = Thing(id=uuid.uuid4(), name="shared")
    await one.read(thing)  # fills Redis
    await two.read(thing)  # a Redis hit for two
    await redis.delete(two.cache.key(thing.id))
    assert await two.read(thing) == thing
    assert (one.loads, two.loads) == (1, 0)


async def test_a_change_committed_by_one_worker_reaches_the_others(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    one, two = await start_worker(settings), await start_worker(settings)
    thing = Thing(id=uuid.uuid4(), name="old")
    await one.read(thing)
    await two.read(thing)
    key = one.cache.key(thing.id)

    await change(engine, one, thing.id)
    assert one.near.get(key) is None  # its own copy at once
    await until(lambda: two.near.get(key) is None)  # the other's by NOTIFY

    renamed = Thing(id=thing.id, name="new")
    assert await two.read(renamed) == renamed


async def test_a_change_rolled_back_tells_nobody(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    one, two = await start_worker(settings), await start_worker(settings)
    thing = Thing(id=uuid.uuid4(), name="kept")
    await two.read(thing)
    async with AsyncSession(engine) as session:
        await session.begin()
        await one.cache.invalidate_on_commit(session, thing.id)
        await session.rollback()
    await asyncio.sleep(2 * HEARTBEAT_SECONDS)  # a NOTIFY would have arrived by now
    assert two.near.get(two.cache.key(thing.id)) is not None


async def test_a_read_racing_an_invalidation_keeps_no_local_copy(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """The read began before the invalidation: what it got may be the old body, so it
    may answer with it, but must not keep it."""
    worker = await start_worker(settings)
    thing_id = uuid.uuid4()
    loaded, release = asyncio.Event(), asyncio.Event()

    async def slow_old_row() -> Thing:
        loaded.set()
        await release.wait()
        return Thing(id=thing_id, name="old")

    reader = asyncio.create_task(worker.cache.get_or_load(thing_id, slow_old_row))
    await loaded.wait()
    await change(engine, worker, thing_id)
    release.set()
    await reader
    assert worker.near.get(worker.cache.key(thing_id)) is None


async def test_a_silent_channel_stops_local_copies_within_the_trust_window(
    settings: Settings,
) -> None:
    worker = Worker(settings)
    thing = Thing(id=uuid.uuid4(), name="cached")
    try:
        async with worker.near.listening():
            await until(lambda: worker.near.live)
            await worker.read(thing)
            assert worker.near.get(worker.cache.key(thing.id)) is not None
        # The listener is gone: nothing confirms the channel any more, as when Redis
        # is paused. Within the trust window the copy stops being served.
        await until(lambda: worker.near.get(worker.cache.key(thing.id)) is None)
    finally:
        await worker.redis.aclose()


async def test_a_lost_listener_drops_local_copies_and_comes_back(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    worker = await start_worker(settings)
    thing = Thing(id=uuid.uuid4(), name="cached")
    await worker.read(thing)
    key = worker.cache.key(thing.id)

    async with engine.connect() as connection:  # what a Postgres restart does to it
        await connection.execute(TERMINATE_LISTENERS)
    await until(lambda: worker.near.get(key) is None)
    await until(lambda: worker.near.live)  # the listener is back
    await worker.read(thing)
    assert worker.near.get(key) is not None


def listener_live() -> float | None:
    return REGISTRY.get_sample_value("app_near_cache_listener_live")


async def test_the_listener_comes_back_after_a_storm_of_terminations(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """The chaos fault pg-terminate: its backend terminated again and again, the listener
    reconnects each time, and is live again soon after the storm ends."""
    worker = await start_worker(settings)
    assert listener_live() == 1
    async with engine.connect() as connection:
        for _ in range(15):
            await connection.execute(TERMINATE_LISTENERS)
            await asyncio.sleep(0.1)
    assert listener_live() == 0 or worker.near.live  # down, or already back
    await until(lambda: worker.near.live, seconds=MAX_BACKOFF_SECONDS + 2 * TRUST_SECONDS)
    assert listener_live() == 1


class FailsOnce(NearCache):
    """A listener whose first connection dies of an error no outage explains, such as
    asyncpg's InternalClientError ("cannot switch to state ...") under connection churn."""

    failed = False

    async def _listen(self) -> None:
        if not self.failed:
            self.failed = True
            raise RuntimeError("cannot switch to state 12; another operation is in progress")
        await super()._listen()


async def test_an_unexpected_error_reconnects_the_listener(settings: Settings) -> None:
    near = FailsOnce(settings.postgres_dsn, ttl_seconds=60, max_entries=100)
    async with near.listening():
        await until(lambda: near.live)
    assert near.failed


def test_the_near_cache_is_off_by_default(settings: Settings) -> None:
    assert NearCache.from_settings(with_overrides(settings, cache_local_ttl_seconds=0)) is None
    on = NearCache.from_settings(with_overrides(settings, cache_local_ttl_seconds=5))
    assert on is not None
    assert on.enabled


async def test_with_redis_down_copies_are_still_kept_and_served(
    start_worker: WorkerMaker, settings: Settings
) -> None:
    """Invalidations travel through Postgres, so a Redis outage costs the copies nothing:
    a read loads from the database once, then the copy serves."""
    worker = await start_worker(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    thing = Thing(id=uuid.uuid4(), name="kept locally")
    for _ in range(3):
        assert await worker.read(thing) == thing
    assert worker.loads == 1


async def test_postgres_unreachable_means_no_local_copies(
    start_worker: WorkerMaker, settings: Settings
) -> None:
    unreachable = with_overrides(settings, database_url=UNREACHABLE_POSTGRES)
    worker = await start_worker(unreachable, listen=False)
    async with worker.near.listening():
        thing = Thing(id=uuid.uuid4(), name="from Redis only")
        await worker.read(thing)
        await asyncio.sleep(HEARTBEAT_SECONDS)
        assert not worker.near.live
        assert worker.near.get(worker.cache.key(thing.id)) is None


async def test_copies_expire_and_the_oldest_goes_first_when_full(
    start_worker: WorkerMaker, settings: Settings
) -> None:
    worker = await start_worker(settings, ttl_seconds=0.2, max_entries=2)
    things = [Thing(id=uuid.uuid4(), name=f"thing {n}") for n in range(3)]
    for thing in things:
        await worker.read(thing)
    keys = [worker.cache.key(thing.id) for thing in things]
    assert [worker.near.get(key) is not None for key in keys] == [False, True, True]
    await asyncio.sleep(0.25)
    assert worker.near.get(keys[2]) is None


async def test_a_ttl_of_zero_turns_local_copies_off(
    start_worker: WorkerMaker, settings: Settings
) -> None:
    worker = await start_worker(settings, ttl_seconds=0, listen=False)
    async with worker.near.listening():  # does nothing: there is nothing to keep fresh
        thing = Thing(id=uuid.uuid4(), name="remote only")
        await worker.read(thing)
        assert worker.near.get(worker.cache.key(thing.id)) is None
        assert not worker.near.enabled


async def test_a_copy_taken_from_redis_before_the_writers_delete_is_dropped(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """The commit's NOTIFY reaches a worker before the writer's Redis delete: a read in
    between copies the old body from Redis. The writer announces the key again once the
    delete is done, and that copy goes too."""
    one, two = await start_worker(settings), await start_worker(settings)
    old = Thing(id=uuid.uuid4(), name="old")
    new = Thing(id=old.id, name="new")
    await one.read(old)
    await two.read(old)
    key = two.cache.key(old.id)
    async with AsyncSession(engine) as session, session.begin():
        await one.cache.invalidate_on_commit(session, old.id)  # committed, not yet deleted
    await until(lambda: two.near.get(key) is None)
    assert await two.read(new) == old  # from Redis: the delete has not happened yet

    await one.cache.invalidate(old.id)  # the writer's after-commit hook
    await until(lambda: two.near.get(key) is None)
    assert await two.read(new) == new


async def test_a_key_announced_while_the_writer_s_listener_is_down_goes_out_once_it_is_up(
    start_worker: WorkerMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """The writer's own listener not connected yet (its worker starting) or again (after
    a lost connection): the announcement waits for it, instead of being dropped."""
    writer, reader = await start_worker(settings, listen=False), await start_worker(settings)
    old = Thing(id=uuid.uuid4(), name="old")
    await reader.read(old)
    key = reader.cache.key(old.id)
    async with AsyncSession(engine) as session, session.begin():
        await writer.cache.invalidate_on_commit(session, old.id)
    await until(lambda: reader.near.get(key) is None)
    assert await reader.read(Thing(id=old.id, name="new")) == old  # copied from Redis again
    await writer.cache.invalidate(old.id)  # the Redis delete, announced: no listener yet
    async with writer.near.listening():
        await until(lambda: reader.near.get(key) is None)
