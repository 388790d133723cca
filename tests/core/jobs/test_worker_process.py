"""The worker as the orchestrator sees it: a real process (tests/core/jobs/slow_worker.py,
the core runner with a slow job) that gets SIGKILL or SIGTERM in the middle of a job.

- SIGKILL (an OOM kill, a lost node): the job stays `picked`; once its heartbeat is
  older than JOBS_HEARTBEAT_TIMEOUT, another worker runs it to completion.
- SIGTERM (a rolling update, a drain): the worker finishes the job it runs, takes no
  new one, and exits 0.
- Its database connection ended (a Postgres restart, a failover): the process lives on
  and takes the next job on a new connection.

These tests commit to the run's database (a worker sees only committed jobs): each
uses a job name of its own and deletes its rows afterwards.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.config import Settings
from app.core.jobs.enqueue import enqueue
from app.core.jobs.worker import APPLICATION_NAME
from tests.core.jobs.conftest import last_error
from tests.issuer import free_port

ROOT = Path(__file__).resolve().parents[3]
# The smallest the settings allow: a killed worker's job is taken again within seconds.
HEARTBEAT_TIMEOUT = 2
JOB_SECONDS = 2.5
# A worker process imports the app before its first job: seconds on a loaded machine.
# Each wait ends as soon as what it waits for holds; the bound only fails a stuck one.
WORKER_START_S = 30


@dataclass
class Probe:
    """A job name of the test's own and the file its job writes to."""

    name: str
    log: Path

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [orjson.loads(line) for line in self.log.read_bytes().splitlines() if line]

    def of(self, event: str, label: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e["event"] == event and e["label"] == label]


@pytest.fixture
async def probe(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[Probe]:
    name = f"slow_{uuid.uuid4().hex[:8]}"
    yield Probe(name, tmp_path / "events.jsonl")
    async with engine.begin() as connection:
        for table in ("pgqueuer", "pgqueuer_log"):
            await connection.execute(
                text(f"DELETE FROM {table} WHERE entrypoint = :n"),  # noqa: S608  # a constant
                {"n": name},
            )


@contextmanager
def worker(
    settings: Settings, probe: Probe, output: Path, **settings_env: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m tests.core.jobs.slow_worker` on the run's database; killed if still
    running when the block ends."""
    env = (
        os.environ
        | {
            "DATABASE_URL": settings.sqlalchemy_url,
            "ENVIRONMENT": "test",
            "JOBS_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "JOBS_CONCURRENCY": "2",
            # Several workers at once: no port to share, unless a test gives one its own.
            "METRICS_ENABLED": "false",
            "SLOW_JOB_NAME": probe.name,
            "SLOW_JOB_SECONDS": str(JOB_SECONDS),
            "SLOW_JOB_LOG": str(probe.log),
        }
        | settings_env
    )
    with (
        output.open("ab") as sink,
        subprocess.Popen(  # our own interpreter and module
            [sys.executable, "-m", "tests.core.jobs.slow_worker"],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        ) as process,
    ):
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()


def written(output: Path) -> str:
    """What the workers wrote (for a failure's message)."""
    return output.read_text(errors="replace")


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], seconds: float, what: str, output: Path
) -> None:
    """Wait until `condition()` holds; fail with the workers' output after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} after {seconds} s; the workers wrote:\n{written(output)}")
        await asyncio.sleep(0.05)


def scraped(port: int, sample: str, job_name: str, **labels: str) -> float | None:
    """A sample of the worker's metrics, as Prometheus would read them."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        exposition = response.read().decode()
    wanted = {"job_name": job_name, **labels}
    for family in text_string_to_metric_families(exposition):
        for found in family.samples:
            if found.name == sample and found.labels == wanted:
                return found.value
    return None


async def enqueue_one(engine: AsyncEngine, name: str, label: str) -> None:
    async with AsyncSession(engine) as session, session.begin():
        await enqueue(session, name, {"label": label})


async def statuses(engine: AsyncEngine, name: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.scalars(
            text("SELECT status::text FROM pgqueuer WHERE entrypoint = :n ORDER BY id"),
            {"n": name},
        )
        return list(rows)


async def test_a_job_whose_worker_was_killed_runs_again_on_another_worker(
    engine: AsyncEngine, settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    output = tmp_path / "workers.log"
    await enqueue_one(engine, probe.name, "A")
    with worker(settings, probe, output) as first:
        await eventually(
            lambda: bool(probe.of("started", "A")), WORKER_START_S, "A never started", output
        )
        first.send_signal(signal.SIGKILL)
        assert first.wait(5) == -signal.SIGKILL
    killed_at = time.time()
    # Dead mid-job: nothing finished it, and the queue still holds it as taken.
    assert probe.of("done", "A") == []
    assert await statuses(engine, probe.name) == ["picked"]

    # Its last heartbeat was at most half a timeout before the kill: with this wait and
    # the new worker's start-up, its first look at the queue finds the job stale (an
    # earlier look would find it still taken, and the next comes 5 s later).
    await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)
    port = free_port()
    metrics_env = {"METRICS_ENABLED": "true", "JOBS_METRICS_PORT": str(port)}
    with worker(settings, probe, output, **metrics_env) as second:
        await eventually(
            lambda: bool(probe.of("done", "A")), WORKER_START_S, "A never finished", output
        )
        [rerun] = [e for e in probe.of("started", "A") if e["pid"] == second.pid]
        assert rerun["at"] >= killed_at + HEARTBEAT_TIMEOUT / 2
        [done] = probe.of("done", "A")
        assert done["pid"] == second.pid
        # The run of a job an earlier run of which never finished: what job_reruns counts.
        assert scraped(port, "job_reruns_total", probe.name) == 1
        assert scraped(port, "job_duration_seconds_count", probe.name, outcome="success") == 1

        async def gone() -> bool:  # the worker deletes a job once it has committed
            return await statuses(engine, probe.name) == []

        await eventually(gone, 5, "A is still in the queue", output)
    assert len(probe.of("started", "A")) == 2  # at least once: twice here, once finished


async def test_a_job_that_keeps_killing_its_worker_is_kept_as_failed(
    engine: AsyncEngine, settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    """Every run counts as an attempt, even one that took its worker down: with
    JOBS_MAX_ATTEMPTS=1 (two runs), the third worker keeps the job as failed instead of
    running it a third time (an OOM-killing job would take down worker after worker)."""
    output = tmp_path / "workers.log"
    await enqueue_one(engine, probe.name, "A")
    for run in (1, 2):
        with worker(settings, probe, output, JOBS_MAX_ATTEMPTS="1") as process:

            def started(run: int = run) -> bool:
                return len(probe.of("started", "A")) == run

            await eventually(started, WORKER_START_S, f"run {run} never started", output)
            process.send_signal(signal.SIGKILL)
            process.wait(5)
        await asyncio.sleep(HEARTBEAT_TIMEOUT / 2)  # as above: stale when the next looks

    async def failed() -> bool:
        return await statuses(engine, probe.name) == ["failed"]

    with worker(settings, probe, output, JOBS_MAX_ATTEMPTS="1"):
        await eventually(failed, WORKER_START_S, "A was not kept as failed", output)
    assert len(probe.of("started", "A")) == 2
    error = await last_error(engine, probe.name)
    assert error is not None
    assert "2 of them never finished" in error


async def test_on_sigterm_the_worker_finishes_its_job_takes_no_new_one_and_exits_0(
    engine: AsyncEngine, settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    output = tmp_path / "workers.log"
    await enqueue_one(engine, probe.name, "A")
    with worker(settings, probe, output) as process:
        await eventually(
            lambda: bool(probe.of("started", "A")), WORKER_START_S, "A never started", output
        )
        process.send_signal(signal.SIGTERM)
        stopped_at = time.monotonic()

        def stopping() -> bool:  # PgQueuer's line, as it sets its shutdown event
            return f"Signal {signal.SIGTERM.value} received" in written(output)

        await eventually(stopping, 10, "the worker never handled SIGTERM", output)
        # Committed while the worker stops, with a free slot (concurrency 2) and its
        # NOTIFY sent: a worker still taking jobs would start it.
        await enqueue_one(engine, probe.name, "B")
        assert process.wait(JOB_SECONDS + 8) == 0, written(output)
        stop_seconds = time.monotonic() - stopped_at

    [done] = probe.of("done", "A")
    assert done["pid"] == process.pid
    assert probe.of("started", "B") == []
    # A finished and deleted; B still waits for the next worker.
    assert await statuses(engine, probe.name) == ["queued"]
    # It waited for A (started before the signal, JOB_SECONDS long), not for a timeout.
    assert stop_seconds < JOB_SECONDS + 5


async def test_a_worker_whose_connection_ended_lives_on_and_takes_the_next_job(
    engine: AsyncEngine, settings: Settings, probe: Probe, tmp_path: Path
) -> None:
    """A process that exited would wait on its container's restart back-off, which
    grows with each exit: the worker restarts its PgQueuer in the process instead."""
    output = tmp_path / "workers.log"
    await enqueue_one(engine, probe.name, "A")
    with worker(settings, probe, output) as process:
        await eventually(
            lambda: bool(probe.of("done", "A")), WORKER_START_S, "A never finished", output
        )
        async with engine.connect() as connection:
            ended = await connection.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name AND datname = current_database()"
                ),
                {"name": APPLICATION_NAME},
            )
        assert ended == 1
        await enqueue_one(engine, probe.name, "B")
        await eventually(
            lambda: bool(probe.of("done", "B")), WORKER_START_S, "B never finished", output
        )
        assert process.poll() is None, written(output)
        [done] = probe.of("done", "B")
        assert done["pid"] == process.pid
