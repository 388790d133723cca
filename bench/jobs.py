"""The job rows of `make bench` (scripts/bench.py), run in bench/compose.yml's `jobs`
service: the production image with the app's settings. docs/benchmarks.md says what
each row measures.

    python /bench/jobs.py drain JOBS                 # a backlog of no-op jobs, then a worker
    python /bench/jobs.py live JOBS                  # a worker first, then the jobs enqueued
    python /bench/jobs.py write ITEM ROUNDS SECONDS  # an order with and without its job

Each result is a line `bench-result {json}` on stdout, with the fields of
scripts/bench.py's Measurement. Never part of the app: the bench mounts this file.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext
from typing import Any
from unittest.mock import patch

import asyncpg
from pgqueuer import AsyncpgDriver, Queries
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings, load_settings
from app.core.db import create_engine, create_session_factory, get_session
from app.core.jobs.enqueue import enqueue
from app.core.jobs.worker import Jobs, work
from app.core.logging import configure_logging

type Connection = asyncpg.Connection[asyncpg.Record]
ENQUEUE_BATCH = 1_000  # jobs per statement when filling the drain's backlog
PROCESSES = int(os.environ.get("WEB_CONCURRENCY", "2"))  # the api's shape


def report(result: dict[str, Any]) -> None:
    print("bench-result", json.dumps(result), flush=True)


def job_name() -> str:
    """A job type of the round's own: its rows are told apart from every other's."""
    return f"bench_noop_{uuid.uuid4().hex[:8]}"


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


async def drain(settings: Settings, count: int) -> None:
    """`count` jobs committed in bulk, then the worker started: jobs/s until none is left."""
    name = job_name()
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        queries = Queries(AsyncpgDriver(connection))
        for start in range(0, count, ENQUEUE_BATCH):
            size = min(ENQUEUE_BATCH, count - start)
            await queries.enqueue([name] * size, [None] * size, [0] * size)
        started = time.perf_counter()
        async with running_worker(settings, name):
            await until_done(connection, name)
            seconds = time.perf_counter() - started
        errors = await failed(connection, name)
    finally:
        await connection.close()
    report({"rps": count / seconds, "requests": count, "errors": errors})


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


async def live(settings: Settings, count: int) -> None:
    """The worker started and idle, then PROCESSES producers enqueue `count` jobs: jobs/s
    from the first enqueue until none is left."""
    name = job_name()
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        async with running_worker(settings, name):
            # One job through first: the worker is listening and warm.
            await Queries(AsyncpgDriver(connection)).enqueue(name, None)
            await until_done(connection, name)
            shares = [count // PROCESSES + (n < count % PROCESSES) for n in range(PROCESSES)]
            producers = [await spawn("produce", name, str(share)) for share in shares]
            for producer in producers:
                await read_line(producer)  # "ready": imported, its connections open
            started = time.perf_counter()
            enqueued = await ask(producers, "go")
            for producer in producers:
                await producer.wait()
            await until_done(connection, name)
            seconds = time.perf_counter() - started
        errors = await failed(connection, name) + sum(e["errors"] for e in enqueued)
        p50, p99 = await latencies_ms(connection, name)
    finally:
        await connection.close()
    report(
        {
            "rps": count / seconds,
            "requests": count,
            "errors": errors,
            "p50_ms": p50,
            "p99_ms": p99,
            "enqueue_rate": count / max(e["seconds"] for e in enqueued),
        }
    )


async def spawn(*args: str) -> asyncio.subprocess.Process:
    """This script in a process of its own (one of the api's), spoken to over its pipes."""
    pipe = asyncio.subprocess.PIPE
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdin=pipe, stdout=pipe
    )


async def read_line(process: asyncio.subprocess.Process) -> bytes:
    assert process.stdout  # noqa: S101  # a pipe
    return await process.stdout.readline()


async def ask(processes: list[asyncio.subprocess.Process], line: str) -> list[dict[str, Any]]:
    """`line` to each process at once, then each one's answer, a line of JSON."""
    for process in processes:
        assert process.stdin  # noqa: S101  # a pipe
        process.stdin.write(f"{line}\n".encode())
        await process.stdin.drain()
    return [json.loads(await read_line(process)) for process in processes]


async def in_flight(
    tasks: int, step: Callable[[], Awaitable[None]], until: float
) -> tuple[list[float], int]:
    """`step` run from `tasks` tasks at once until `until` (perf_counter): the latency
    (ms) of each success, and the number of failures."""
    latencies: list[float] = []
    errors = 0

    async def loop() -> None:
        nonlocal errors
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                await step()
            except Exception:  # counted: the bench fails on over 1 %
                errors += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(loop() for _ in range(tasks)))
    return latencies, errors


async def produce(settings: Settings, name: str, count: int) -> None:
    """A producer of the live row: `count` jobs, each in a transaction of its own through
    the app's `enqueue` (as a request does), DB_POOL_SIZE at a time."""
    engine = create_engine(settings)
    sessions = create_session_factory(engine)
    numbers = iter(range(count))

    async def connect() -> None:
        async with sessions() as session:
            await session.connection()

    async def enqueue_all() -> int:
        errors = 0
        for number in numbers:  # shared: each job once, by whichever task is free
            try:
                async with sessions() as session, session.begin():
                    await enqueue(session, name, {"n": number})
            except Exception:  # counted: the bench fails on over 1 %
                errors += 1
        return errors

    # The pool full before the clock starts.
    await asyncio.gather(*(connect() for _ in range(settings.db_pool_size)))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.perf_counter()
    errors = await asyncio.gather(*(enqueue_all() for _ in range(settings.db_pool_size)))
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "errors": sum(errors)}), flush=True)
    await engine.dispose()


async def skip_enqueue(
    session: AsyncSession, job: str, payload: dict[str, Any], *, dedupe_key: str | None = None
) -> None:
    """`enqueue` switched off: the write row's reference."""


async def write_worker(settings: Settings, item_id: uuid.UUID) -> None:
    """One process of the write rows: reads `on|off SECONDS` lines, answers each with the
    transactions it committed in that time, DB_POOL_SIZE in flight, its job enqueued or not."""
    # Imported here, by name: `make init examples=no` removes the orders example, and the
    # other rows do not need it.
    service: Any = importlib.import_module("app.orders.service")
    engine = create_engine(settings)
    sessions = create_session_factory(engine)
    data = service.OrderCreate(item_id=item_id, quantity=1)

    async def create_order() -> None:
        # The session as a request gets it: get_session commits, the one owner of the commit.
        async with asynccontextmanager(get_session)(sessions) as session:
            await service.create_order(session, data, owner="bench")

    while line := await asyncio.to_thread(sys.stdin.readline):
        variant, seconds = line.split()
        # The service's own name for enqueue, replaced for this round only.
        switch: AbstractContextManager[object] = (
            nullcontext() if variant == "on" else patch.object(service, "enqueue", skip_enqueue)
        )
        with switch:
            started = time.perf_counter()
            until = started + float(seconds)
            latencies, errors = await in_flight(settings.db_pool_size, create_order, until)
            elapsed = time.perf_counter() - started
        print(json.dumps({"latencies": latencies, "errors": errors, "seconds": elapsed}))
        sys.stdout.flush()
    await engine.dispose()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


async def write(item_id: str, rounds: int, seconds: float) -> None:
    """PROCESSES write workers; the two variants alternate, in reverse every other round."""
    workers = [await spawn("write-worker", item_id) for _ in range(PROCESSES)]

    async def measure(variant: str, length: float) -> dict[str, Any]:
        answers = await ask(workers, f"{variant} {length}")
        latencies = [ms for answer in answers for ms in answer["latencies"]]
        return {
            "rps": sum(len(a["latencies"]) / a["seconds"] for a in answers),
            "requests": len(latencies),
            "errors": sum(a["errors"] for a in answers),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
        }

    for variant in ("on", "off"):  # warm-up: connections, prepared statements
        await measure(variant, min(seconds, 2.0))
    for number in range(1, rounds + 1):
        for variant in ("on", "off") if number % 2 else ("off", "on"):
            report({"row": variant, "round": number, **await measure(variant, seconds)})
    for worker in workers:
        assert worker.stdin  # noqa: S101  # a pipe
        worker.stdin.close()
        await worker.wait()


def main(argv: list[str]) -> int:
    settings = load_settings()
    configure_logging("WARNING", settings.effective_log_format)
    match argv:
        case ["drain", count]:
            asyncio.run(drain(settings, int(count)))
        case ["live", count]:
            asyncio.run(live(settings, int(count)))
        case ["produce", name, count]:
            asyncio.run(produce(settings, name, int(count)))
        case ["write", item_id, rounds, seconds]:
            asyncio.run(write(item_id, int(rounds), float(seconds)))
        case ["write-worker", item_id]:
            asyncio.run(write_worker(settings, uuid.UUID(item_id)))
        case _:
            print(__doc__, file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
