"""The worker's healthchecks (app/core/jobs/alive.py): the ages of the files the worker
touches while its database answers (readiness) and while its event loop turns
(liveness), read by a process that imports nothing else."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import make_url

from app.core.config import Settings
from app.core.jobs import alive, worker
from tests.conftest import until, with_overrides


def test_alive_reads_the_workers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched = tmp_path / "alive"
    monkeypatch.setattr(alive, "ALIVE_FILE", touched)
    assert not alive.is_alive()  # never touched: the worker never reached its database
    touched.touch()
    assert alive.is_alive()
    stale = time.time() - alive.ALIVE_WITHIN_SECONDS - 1
    os.utime(touched, (stale, stale))
    assert not alive.is_alive()


def test_liveness_reads_the_loops_own_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alive, "LOOP_FILE", tmp_path / "loop")
    monkeypatch.setattr(alive, "ALIVE_FILE", tmp_path / "alive")
    assert not alive.loop_turns()
    alive.LOOP_FILE.touch()
    assert alive.loop_turns()
    assert not alive.is_alive()  # the database was never reached


async def test_a_worker_cut_off_from_its_database_stays_live_but_not_ready(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It reconnects by itself once Postgres is back (RESTART_DELAY): a liveness check
    that failed during the outage would get every worker restarted, with back-off."""
    monkeypatch.setattr(alive, "LOOP_FILE", tmp_path / "loop")
    monkeypatch.setattr(alive, "ALIVE_FILE", tmp_path / "alive")
    monkeypatch.setattr(worker, "ALIVE_EVERY_SECONDS", 0.05)
    with socket.socket() as listener:  # a port nothing listens on once it is closed
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    url = make_url(settings.sqlalchemy_url).set(host="127.0.0.1", port=port)
    unreachable = with_overrides(
        settings, database_url=url.render_as_string(hide_password=False), metrics_enabled=False
    )
    shutdown = asyncio.Event()
    running = asyncio.create_task(worker.work(unreachable, worker.Jobs(), shutdown))
    try:
        await until(alive.LOOP_FILE.exists, 10)
        first = alive.LOOP_FILE.stat().st_mtime_ns
        await until(lambda: alive.LOOP_FILE.stat().st_mtime_ns > first, 10)
        assert alive.loop_turns()
        assert not alive.ALIVE_FILE.exists()
    finally:
        shutdown.set()
        await asyncio.wait_for(running, 15)


def test_the_check_imports_none_of_the_app_stack() -> None:
    """Each healthcheck is a new process: importing the database stack first took
    seconds on a loaded host, past the check's timeout."""
    probe = (
        "import runpy, sys; runpy.run_module('app.core.jobs.alive', run_name='probe');"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy', 'asyncpg', 'pgqueuer', 'pydantic', 'fastapi', 'structlog'})))"
    )
    result = subprocess.run(  # noqa: S603  # this interpreter, with a fixed script
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
