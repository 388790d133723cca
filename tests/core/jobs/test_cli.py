"""`python -m app.core.jobs.cli`: failed jobs listed and queued again, the backlog, and
the worker's liveness check (these commit: each test uses a job name of its own)."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
from app.core.jobs import worker
from app.core.jobs.cli import main


@pytest.fixture(autouse=True)
def on_the_test_database(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", settings.sqlalchemy_url)


async def test_a_failed_job_is_listed_and_queued_again(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with engine.begin() as connection:
        job_id = await connection.scalar(
            text(
                "INSERT INTO pgqueuer (priority, status, entrypoint, attempts)"
                " VALUES (0, 'failed', :n, 6) RETURNING id"
            ),
            {"n": job_name},
        )
        await connection.execute(
            text(
                "INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority, traceback)"
                " VALUES (:i, 'exception', :n, 0, :t)"
            ),
            {
                "i": job_id,
                "n": job_name,
                "t": '{"exception_type": "ValueError", "exception_message": "bad payload"}',
            },
        )
    # The CLI runs its own event loop (asyncio.run), so in a thread of its own here.
    assert await asyncio.to_thread(main, ["failed"]) == 0
    listed = capsys.readouterr().out
    assert f"{job_id}\t{job_name}\tattempts=6" in listed
    assert "ValueError: bad payload" in listed  # what it died of
    assert await asyncio.to_thread(main, ["retry", str(job_id)]) == 0
    async with engine.connect() as connection:
        status = await connection.scalar(
            text("SELECT status::text FROM pgqueuer WHERE id = :i"), {"i": job_id}
        )
    assert status == "queued"
    assert await asyncio.to_thread(main, ["backlog"]) == 0
    assert job_name in capsys.readouterr().out


def test_alive_reads_the_workers_file(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    alive = tmp_path / "alive"  # type: ignore[operator]
    monkeypatch.setattr(worker, "ALIVE_FILE", alive)
    assert main(["alive"]) == 1  # never touched: the worker never reached its database
    alive.touch()
    assert main(["alive"]) == 0
    stale = time.time() - worker.ALIVE_WITHIN_SECONDS - 1
    os.utime(alive, (stale, stale))
    assert main(["alive"]) == 1


async def test_retrying_a_job_that_is_not_failed_says_so_and_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await asyncio.to_thread(main, ["retry", "999999999"]) == 1
    assert "not failed jobs (unknown, or not failed): 999999999" in capsys.readouterr().err


def test_a_job_id_that_is_not_a_number_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exited:
        main(["retry", "abc"])
    assert exited.value.code == 2  # argparse: "invalid int value: 'abc'"
