"""The worker's healthcheck (app/core/jobs/alive.py): the age of the file the worker
touches while its database answers, read by a process that imports nothing else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.jobs import alive


def test_alive_reads_the_workers_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    touched = tmp_path / "alive"
    monkeypatch.setattr(alive, "ALIVE_FILE", touched)
    assert not alive.is_alive()  # never touched: the worker never reached its database
    touched.touch()
    assert alive.is_alive()
    stale = time.time() - alive.ALIVE_WITHIN_SECONDS - 1
    os.utime(touched, (stale, stale))
    assert not alive.is_alive()


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
