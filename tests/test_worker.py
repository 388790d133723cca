"""app/worker.py: the worker's wiring (the jobs themselves are tested next to their
domain, core's in tests/core/jobs/), and scripts/dev_worker.py, which runs it in `make up`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from app.core.config import Settings
from app.worker import create_jobs, main


def test_the_worker_runs_the_nightly_cleanup(settings: Settings) -> None:
    assert "cleanup" in create_jobs(settings).periodic


@pytest.mark.examples
def test_the_worker_runs_the_orders_jobs(settings: Settings) -> None:
    assert "confirm_order" in create_jobs(settings).handlers


def test_bad_settings_stop_the_worker_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("JOBS_CONCURRENCY", "1")
    assert main() == 2
    assert "JOBS_CONCURRENCY" in capsys.readouterr().err


def test_a_reload_while_the_development_worker_starts_ends_it_without_a_traceback() -> None:
    # watchfiles interrupts the worker on every change under app/, at any moment: here,
    # while it is still importing, before the worker handles SIGINT itself.
    worker = subprocess.Popen(  # our own interpreter and module
        [sys.executable, "-m", "scripts.dev_worker"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.2)
    worker.send_signal(signal.SIGINT)
    output, _ = worker.communicate(timeout=30)
    assert "Traceback" not in output.decode(), output.decode()
    assert worker.returncode in {128 + signal.SIGINT, 0}  # quiet, or stopped as the worker does
