"""`python -m app.core.jobs.cli`: failed jobs listed and queued again, and the backlog
(these commit: each test uses a job name of its own)."""

from __future__ import annotations

import asyncio
import re

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.config import Settings
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


async def test_a_failed_or_queued_job_can_be_dropped_a_running_one_not(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A queued job may be one no handler runs (renamed, removed): dropped as a failed one
    is. One a worker has picked is left to it."""
    async with engine.begin() as connection:
        failed, waiting, running = [
            await connection.scalar(
                text(
                    "INSERT INTO pgqueuer (priority, status, entrypoint, attempts)"
                    " VALUES (0, CAST(:s AS pgqueuer_status), :n, 6) RETURNING id"
                ),
                {"n": job_name, "s": status},
            )
            for status in ("failed", "queued", "picked")
        ]
        await connection.execute(
            text(
                "INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority, traceback)"
                " VALUES (:i, 'exception', :n, 0, '{}')"
            ),
            {"i": failed, "n": job_name},
        )
    ids = [str(failed), str(waiting), str(running)]
    assert await asyncio.to_thread(main, ["drop", *ids]) == 1
    said = capsys.readouterr()
    assert said.out.strip() == f"dropped: {failed}, {waiting}"
    assert f"{running}: not failed or queued (picked)" in said.err
    async with engine.connect() as connection:
        left = await connection.scalars(
            text("SELECT id FROM pgqueuer WHERE entrypoint = :n"), {"n": job_name}
        )
        assert list(left) == [running]
        logged = await connection.scalar(
            text("SELECT count(*) FROM pgqueuer_log WHERE job_id = :i"), {"i": failed}
        )
        assert logged == 1


async def test_a_job_waiting_out_a_retrys_back_off_is_due_later_not_waiting(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """As jobs_oldest_waiting_seconds counts: waiting starts when the job may run. Until
    then it is listed apart, so a job that keeps failing is seen before it has failed."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO pgqueuer (priority, status, entrypoint, execute_after)"
                " VALUES (0, 'queued', :n, now() + interval '1 hour')"
            ),
            {"n": job_name},
        )
    assert await asyncio.to_thread(main, ["backlog"]) == 0
    assert f"{job_name}\tnone waiting; 1 due later" in capsys.readouterr().out


async def test_the_backlog_counts_jobs_due_now_and_later_apart(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO pgqueuer (priority, status, entrypoint, execute_after) VALUES"
                " (0, 'queued', :n, now() - interval '90 seconds'),"
                " (0, 'queued', :n, now() - interval '10 seconds'),"
                " (0, 'queued', :n, now() + interval '1 hour')"
            ),
            {"n": job_name},
        )
    assert await asyncio.to_thread(main, ["backlog"]) == 0
    listed = capsys.readouterr().out
    assert re.search(rf"{job_name}\t2 waiting, the oldest for (9\d) s; 1 due later", listed)


async def test_the_backlog_lists_the_ids_to_drop_the_first_due_first(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with engine.begin() as connection:
        ids = await connection.scalars(
            text(
                "INSERT INTO pgqueuer (priority, status, entrypoint, execute_after)"
                " SELECT 0, 'queued', :n, now() - make_interval(secs => 20 - s)"
                " FROM generate_series(1, 12) AS s RETURNING id"
            ),
            {"n": job_name},
        )
        first = sorted(ids)[:10]
    assert await asyncio.to_thread(main, ["backlog"]) == 0
    listed = capsys.readouterr().out
    assert f"{job_name}\t12 waiting" in listed
    assert f"\tids: {' '.join(map(str, first))} …" in listed  # the first ten, and more


async def test_retrying_a_job_that_is_not_failed_says_so_and_fails(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with engine.begin() as connection:
        waiting = await connection.scalar(
            text(
                "INSERT INTO pgqueuer (priority, status, entrypoint) VALUES (0, 'queued', :n)"
                " RETURNING id"
            ),
            {"n": job_name},
        )
    assert await asyncio.to_thread(main, ["retry", "999999999", str(waiting)]) == 1
    said = capsys.readouterr()
    assert "999999999: no such job in the queue" in said.err
    assert f"{waiting}: not failed (queued)" in said.err  # retry is for failed jobs only
    assert said.out == ""  # nothing queued, nothing said to be


@pytest.mark.parametrize("job_id", ["abc", "0", "-1", str(2**63), "1e3"])
def test_a_job_id_that_is_not_one_is_a_usage_error(
    job_id: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["retry", job_id])
    assert exited.value.code == 2
    assert "is not a job id" in capsys.readouterr().err


async def test_a_retry_whose_dedupe_key_is_taken_again_says_so_and_queues_the_others(
    engine: AsyncEngine, job_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The dedupe key binds queued and running jobs only: a job enqueued with the key of a
    failed one blocks that one's retry, which must not stop the other ids."""
    insert = text(
        "INSERT INTO pgqueuer (priority, status, entrypoint, attempts, dedupe_key)"
        " VALUES (0, CAST(:s AS pgqueuer_status), :n, :a, :k) RETURNING id"
    )
    async with engine.begin() as connection:
        blocked = await connection.scalar(insert, {"s": "failed", "n": job_name, "a": 6, "k": "k1"})
        other = await connection.scalar(insert, {"s": "failed", "n": job_name, "a": 6, "k": "k2"})
        await connection.scalar(insert, {"s": "queued", "n": job_name, "a": 0, "k": "k1"})
    assert await asyncio.to_thread(main, ["retry", str(blocked), str(other)]) == 1
    out, err = capsys.readouterr()
    assert f"queued again: {other}" in out
    assert f"{blocked}: its dedupe key is taken" in err
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, status::text FROM pgqueuer WHERE id IN (:b, :o)"),
            {"b": blocked, "o": other},
        )
        assert dict(rows.all()) == {blocked: "failed", other: "queued"}
