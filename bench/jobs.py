"""The job rows of `make bench` (scripts/bench.py), run in the production image with the
app's settings (bench/compose.yml's `jobs` service):

    python /bench/jobs.py drain JOBS           # a backlog of JOBS no-op jobs, then a worker
    python /bench/jobs.py live JOBS            # a worker first, then JOBS enqueued
    python /bench/jobs.py write ITEM ROUNDS SECONDS  # an order with and without its job

- `drain`: JOBS no-op jobs committed in bulk, then the app's worker (`work` in
  app/core/jobs/worker.py, its JOBS_CONCURRENCY settings, PgQueuer as production runs
  it) started; jobs/s from its start until the queue holds none of them.
- `live`: the worker started and idle first; then WEB_CONCURRENCY other processes (the
  api's shape) enqueue JOBS no-op jobs between them, each in a transaction of its own
  through the app's `enqueue` (as a request does), DB_POOL_SIZE at a time; jobs/s from
  the first enqueue until the queue holds none, and each job's latency from its
  enqueue to its completion (PgQueuer's log).
- `write`: the orders service's create transaction (insert, flush, enqueue
  confirm_order, commit: `create_order` in the session `get_session` commits), and the
  same with `enqueue` replaced in the service module by a function that does nothing.
  WEB_CONCURRENCY processes, DB_POOL_SIZE transactions in flight in each (the api's
  shape); the two variants alternate round by round, in reverse every other round.

Each result is a line `bench-result {json}` on stdout. Never part of the app: the bench
mounts this file.
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

RESULT = "bench-result"
ENQUEUE_BATCH = 1_000  # jobs per statement when filling the drain's backlog
POLL_SECONDS = 0.01
DONE_WITHIN_SECONDS = 300.0
OWNER = "bench"


def report(result: dict[str, Any]) -> None:
    print(RESULT, json.dumps(result), flush=True)


def job_name() -> str:
    """A job type of the round's own: its rows are told apart from every other's."""
    return f"bench_noop_{uuid.uuid4().hex[:8]}"


def no_op_jobs(name: str) -> Jobs:
    jobs = Jobs()

    @jobs.job(name)
    async def no_op(session: AsyncSession, payload: dict[str, Any]) -> None:
        pass

    return jobs


@asynccontextmanager
async def running_worker(settings: Settings, name: str) -> AsyncIterator[None]:
    """The app's worker with the no-op job `name`, stopped on the way out."""
    shutdown = asyncio.Event()
    worker = asyncio.create_task(work(settings, no_op_jobs(name), shutdown))
    try:
        yield
    finally:
        shutdown.set()
        await asyncio.wait_for(worker, 30)


async def until_done(connection: asyncpg.Connection[asyncpg.Record], name: str) -> None:
    """Until the queue holds no job `name`: PgQueuer deletes a job once it logged it done."""
    query = "SELECT count(*) FROM pgqueuer WHERE entrypoint = $1"
    async with asyncio.timeout(DONE_WITHIN_SECONDS):
        while True:  # polled: a NOTIFY would add to what is measured
            if not await connection.fetchval(query, name):
                return
            await asyncio.sleep(POLL_SECONDS)


async def failed(connection: asyncpg.Connection[asyncpg.Record], name: str) -> int:
    query = (
        "SELECT count(*) FROM pgqueuer_log"
        " WHERE entrypoint = $1 AND status IN ('exception', 'failed')"
    )
    return int(await connection.fetchval(query, name))


async def drain(settings: Settings, count: int) -> None:
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
    report({"rate": count / seconds, "count": count, "seconds": seconds, "errors": errors})


async def latencies_ms(
    connection: asyncpg.Connection[asyncpg.Record], name: str
) -> tuple[float, float]:
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
    name = job_name()
    processes = int(os.environ.get("WEB_CONCURRENCY", "2"))
    connection = await asyncpg.connect(settings.postgres_dsn)
    try:
        async with running_worker(settings, name):
            # One job through first: the worker is listening and warm.
            await Queries(AsyncpgDriver(connection)).enqueue(name, None)
            await until_done(connection, name)
            shares = [count // processes + (n < count % processes) for n in range(processes)]
            producers = [await start_producer(name, share) for share in shares]
            for producer in producers:
                await read_line(producer)  # "ready": imported, its connections open
            started = time.perf_counter()
            for producer in producers:
                assert producer.stdin  # noqa: S101  # a pipe
                producer.stdin.write(b"go\n")
                await producer.stdin.drain()
            enqueued = [json.loads(await read_line(producer)) for producer in producers]
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
            "rate": count / seconds,
            "count": count,
            "seconds": seconds,
            "errors": errors,
            "p50_ms": p50,
            "p99_ms": p99,
            "enqueue_rate": count / max(e["seconds"] for e in enqueued),
        }
    )


async def start_producer(name: str, count: int) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "produce", name, str(count)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_line(process: asyncio.subprocess.Process) -> bytes:
    assert process.stdout  # noqa: S101  # a pipe
    return await process.stdout.readline()


async def in_flight(
    count: int, step: Callable[[], Awaitable[None]], until: float | None = None
) -> tuple[list[float], int]:
    """Run `step` from `count` tasks at once, until `until` (perf_counter) or, without
    one, once per task; the latency (ms) of each success, and the failures."""
    latencies: list[float] = []
    errors = 0

    async def loop() -> None:
        nonlocal errors
        while True:
            started = time.perf_counter()
            try:
                await step()
            except Exception:  # counted: the bench fails on over 1 %
                errors += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)
            if until is None or time.perf_counter() >= until:
                return

    await asyncio.gather(*(loop() for _ in range(count)))
    return latencies, errors


async def produce(name: str, count: int) -> None:
    """The live row's producer: `count` jobs, each enqueued in a transaction of its own,
    DB_POOL_SIZE at a time; prints "ready" once connected, starts on a line on stdin."""
    settings = load_settings()
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

    await in_flight(settings.db_pool_size, connect)  # the pool full before the clock starts
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    started = time.perf_counter()
    errors = await asyncio.gather(*(enqueue_all() for _ in range(settings.db_pool_size)))
    print(json.dumps({"seconds": time.perf_counter() - started, "errors": sum(errors)}))
    sys.stdout.flush()
    await engine.dispose()


async def skip_enqueue(
    session: AsyncSession, job: str, payload: dict[str, Any], *, dedupe_key: str | None = None
) -> None:
    """`enqueue` switched off: the write row's reference."""


async def write_worker(item_id: uuid.UUID) -> None:
    """One process of the write rows: reads `on|off SECONDS` lines, answers each with
    the transactions it committed in that time, with the job enqueued or not."""
    # Imported here, by name: the orders example is the one write this row measures, and
    # `make init examples=no` removes it (the other rows do not need it).
    service: Any = importlib.import_module("app.orders.service")
    settings = load_settings()
    engine = create_engine(settings)
    sessions = create_session_factory(engine)
    data = service.OrderCreate(item_id=item_id, quantity=1)

    async def create_order() -> None:
        # The session as a request gets it: get_session commits, the one owner of the commit.
        async with asynccontextmanager(get_session)(sessions) as session:
            await service.create_order(session, data, owner=OWNER)

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
    processes = int(os.environ.get("WEB_CONCURRENCY", "2"))
    workers = [
        await asyncio.create_subprocess_exec(
            *(sys.executable, __file__, "write-worker", item_id),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(processes)
    ]

    async def measure(variant: str, length: float) -> dict[str, Any]:
        for worker in workers:
            assert worker.stdin  # noqa: S101  # a pipe
            worker.stdin.write(f"{variant} {length}\n".encode())
            await worker.stdin.drain()
        answers = [json.loads(await read_line(worker)) for worker in workers]
        latencies = [ms for answer in answers for ms in answer["latencies"]]
        return {
            "rate": sum(len(a["latencies"]) / a["seconds"] for a in answers),
            "count": len(latencies),
            "errors": sum(a["errors"] for a in answers),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
        }

    for variant in ("on", "off"):  # warm-up: connections, prepared statements
        await measure(variant, min(seconds, 2.0))
    for number in range(1, rounds + 1):
        order = ("on", "off") if number % 2 else ("off", "on")
        for variant in order:
            result = await measure(variant, seconds)
            report({"row": variant, "round": number, **result})
    for worker in workers:
        assert worker.stdin  # noqa: S101  # a pipe
        worker.stdin.close()
        await worker.wait()


def main(argv: list[str]) -> int:
    settings = load_settings()
    configure_logging("WARNING", settings.effective_log_format)
    command, *args = argv
    if command == "drain":
        asyncio.run(drain(settings, int(args[0])))
    elif command == "live":
        asyncio.run(live(settings, int(args[0])))
    elif command == "produce":
        asyncio.run(produce(args[0], int(args[1])))
    elif command == "write":
        asyncio.run(write(args[0], int(args[1]), float(args[2])))
    elif command == "write-worker":
        asyncio.run(write_worker(uuid.UUID(args[0])))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
