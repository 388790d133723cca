"""The job rows of `make bench` (scripts/bench.py), run in bench/compose.yml's `jobs`
service: the production image with the app's settings. docs/benchmarks.md says what
each row measures. Never part of the app: the bench mounts this file.

    python /bench/jobs.py drain JOBS                 # a backlog of no-op jobs, then a worker
    python /bench/jobs.py live JOBS                  # a worker first, then the jobs enqueued
    python /bench/jobs.py write on|off ITEM SECONDS  # orders written, their jobs enqueued or not

Each prints its result last, `bench-result {json}`, with the fields of scripts/bench.py's
Measurement.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from unittest.mock import patch

import asyncpg
from pgqueuer import AsyncpgDriver, Queries
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.config import Settings, load_settings
from app.core.db import create_engine, create_session_factory, get_session
from app.core.jobs.enqueue import enqueue
from app.core.jobs.worker import Jobs, work
from app.core.logging import configure_logging

type Connection = asyncpg.Connection[asyncpg.Record]
type Process = asyncio.subprocess.Process
type Sessions = async_sessionmaker[AsyncSession]
type Step = Callable[[Any], Awaitable[object]]
ENQUEUE_BATCH = 1_000  # jobs per statement when filling the drain's backlog
PROCESSES = int(os.environ.get("WEB_CONCURRENCY", "2"))  # the api's shape


@asynccontextmanager
async def no_op_jobs(settings: Settings) -> AsyncIterator[tuple[Connection, str]]:
    """A connection to the queue, and a job type of the round's own: its rows are told
    apart from every other's."""
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        yield connection, f"bench_noop_{uuid.uuid4().hex[:8]}"
    finally:
        await connection.close()


@asynccontextmanager
async def running_worker(settings: Settings, name: str) -> AsyncIterator[None]:
    """The app's worker (PgQueuer as production runs it) with the no-op job `name`."""
    jobs = Jobs()

    @jobs.job(name)
    async def no_op(session: AsyncSession, payload: dict[str, Any]) -> None:
        pass

    shutdown = asyncio.Event()
    worker = asyncio.create_task(work(settings, jobs, shutdown))
    try:
        yield
    finally:
        shutdown.set()
        await asyncio.wait_for(worker, 30)


async def until_done(connection: Connection, name: str) -> None:
    """Until the queue holds no job `name`: PgQueuer deletes a job once it logged it done."""
    query = "SELECT count(*) FROM pgqueuer WHERE entrypoint = $1"
    async with asyncio.timeout(300):
        while True:  # polled: a NOTIFY would add to what is measured
            if not await connection.fetchval(query, name):
                return
            await asyncio.sleep(0.01)


async def failed(connection: Connection, name: str) -> int:
    query = (
        "SELECT count(*) FROM pgqueuer_log"
        " WHERE entrypoint = $1 AND status IN ('exception', 'failed')"
    )
    return int(await connection.fetchval(query, name))


async def drain(settings: Settings, count: int) -> dict[str, Any]:
    """`count` jobs committed in bulk, then the worker started: jobs/s until none is left."""
    async with no_op_jobs(settings) as (connection, name):
        queries = Queries(AsyncpgDriver(connection))
        for start in range(0, count, ENQUEUE_BATCH):
            size = min(ENQUEUE_BATCH, count - start)
            await queries.enqueue([name] * size, [None] * size, [0] * size)
        started = time.perf_counter()
        async with running_worker(settings, name):
            await until_done(connection, name)
            seconds = time.perf_counter() - started
        errors = await failed(connection, name)
    return {
        "rps": count / seconds,
        "p50_ms": None,
        "p99_ms": None,
        "requests": count,
        "errors": errors,
    }


async def latencies_ms(connection: Connection, name: str) -> tuple[float, float]:
    """The median and 99th percentile of enqueue-to-done, from PgQueuer's log (a job's
    'queued' row is written in its enqueuing transaction, 'successful' once it ran)."""
    row = await connection.fetchrow(
        """
        SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
            ORDER BY extract(epoch FROM done.created - queued.created)) AS p
        FROM pgqueuer_log queued
        JOIN pgqueuer_log done ON done.job_id = queued.job_id AND done.status = 'successful'
        WHERE queued.entrypoint = $1 AND queued.status = 'queued'
        """,
        name,
    )
    p50, p99 = row["p"] if row and row["p"] else (0.0, 0.0)
    return p50 * 1000, p99 * 1000


async def live(settings: Settings, count: int) -> dict[str, Any]:
    """The worker started and idle, then PROCESSES clients enqueue `count` jobs (rounded
    down to a multiple of PROCESSES): jobs/s from the first enqueue until none is left."""
    count -= count % PROCESSES
    async with no_op_jobs(settings) as (connection, name), running_worker(settings, name):
        # One job through first: the worker is listening and warm.
        await Queries(AsyncpgDriver(connection)).enqueue(name, None)
        await until_done(connection, name)
        processes = await clients("enqueue", name, str(count // PROCESSES))
        started = time.perf_counter()
        enqueued = await go(processes)
        await until_done(connection, name)
        seconds = time.perf_counter() - started
        p50, p99 = await latencies_ms(connection, name)
        errors = await failed(connection, name) + sum(e["errors"] for e in enqueued)
    return {
        "rps": count / seconds,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": count,
        "errors": errors,
        "enqueue_rate": count / max(e["seconds"] for e in enqueued),
    }


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def write(variant: str, item_id: str, seconds: str) -> dict[str, Any]:
    """PROCESSES clients write orders for `seconds`, their jobs enqueued (`on`) or not."""
    answers = await go(await clients("write", variant, item_id, seconds))
    latencies = [ms for answer in answers for ms in answer["latencies"]]
    return {
        "rps": sum(len(a["latencies"]) / a["seconds"] for a in answers),
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "requests": len(latencies),
        "errors": sum(a["errors"] for a in answers),
    }


async def clients(*command: str) -> list[Process]:
    """PROCESSES copies of this script (`client`), one of the api's processes each, once
    each has imported the app and filled its pool."""
    pipe = asyncio.subprocess.PIPE
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, __file__, "client", *command, stdin=pipe, stdout=pipe
        )
        for _ in range(PROCESSES)
    ]
    for process in processes:
        assert process.stdout  # noqa: S101  # a pipe
        await process.stdout.readline()  # "ready"
    return processes


async def go(processes: list[Process]) -> list[dict[str, Any]]:
    """The clients started at once; each one's answer, a line of JSON."""
    outputs = await asyncio.gather(*(process.communicate(b"go\n") for process in processes))
    return [json.loads(stdout) for stdout, _ in outputs]


async def client(settings: Settings, command: list[str]) -> None:
    """`enqueue NAME COUNT` or `write on|off ITEM SECONDS` from DB_POOL_SIZE tasks at once
    (a worker's pool, all of it in flight), once told to go."""
    engine = create_engine(settings)
    sessions = create_session_factory(engine)
    match command:
        case ["enqueue", name, count]:
            turns, step = enqueues(sessions, name, int(count))
        case ["write", variant, item_id, seconds]:
            turns, step = order_writes(sessions, variant, uuid.UUID(item_id), float(seconds))

    async def connect() -> None:
        async with sessions() as session:
            await session.connection()

    # The pool full before the clock starts.
    await asyncio.gather(*(connect() for _ in range(settings.db_pool_size)))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    print(json.dumps(await in_flight(settings.db_pool_size, turns, step)), flush=True)
    await engine.dispose()


def enqueues(sessions: Sessions, name: str, count: int) -> tuple[Iterator[Any], Step]:
    """`count` jobs `name`, each in a transaction of its own through the app's `enqueue`,
    as a request does."""

    async def enqueue_one(number: int) -> None:
        async with sessions() as session, session.begin():
            await enqueue(session, name, {"n": number})

    return iter(range(count)), enqueue_one


async def skip_enqueue(*_: object, **__: object) -> None:
    """`enqueue` switched off: the write row's reference."""


def order_writes(
    sessions: Sessions, variant: str, item_id: uuid.UUID, seconds: float
) -> tuple[Iterator[Any], Step]:
    """The orders service's create transaction as a request runs it, for `seconds`."""
    # Imported here, by name: `make init examples=no` removes the orders example, and the
    # other rows do not need it.
    service: Any = importlib.import_module("app.orders.service")
    if variant == "off":  # the service's own name for enqueue, replaced in this process
        patch.object(service, "enqueue", skip_enqueue).start()
    data = service.OrderCreate(item_id=item_id, quantity=1)

    async def create_order(_: None) -> None:
        # The session as a request gets it: get_session commits, the one owner of the commit.
        async with asynccontextmanager(get_session)(sessions) as session:
            await service.create_order(session, data, owner="bench")

    return for_seconds(seconds), create_order


def for_seconds(seconds: float) -> Iterator[None]:
    # A generator's body runs at its first turn: the clock starts with the tasks.
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        yield


async def in_flight(tasks: int, turns: Iterator[Any], step: Step) -> dict[str, Any]:
    """`step` from `tasks` tasks at once, each taking the next of the shared `turns` until
    none is left: the latency (ms) of each success, the failures, the seconds it took."""
    latencies: list[float] = []
    errors = 0

    async def loop() -> None:
        nonlocal errors
        for turn in turns:
            started = time.perf_counter()
            try:
                await step(turn)
            except Exception:  # counted: the bench fails on over 1 %
                errors += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(tasks)))
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - started}


def main(argv: list[str]) -> int:
    settings = load_settings()
    configure_logging("WARNING", settings.effective_log_format)
    match argv:
        case ["drain", count]:
            result = asyncio.run(drain(settings, int(count)))
        case ["live", count]:
            result = asyncio.run(live(settings, int(count)))
        case ["write", "on" | "off" as variant, item_id, seconds]:
            result = asyncio.run(write(variant, item_id, seconds))
        case ["client", *command]:
            asyncio.run(client(settings, command))
            return 0
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    print("bench-result", json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
