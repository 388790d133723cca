"""app/worker.py: the worker's wiring (its jobs run in tests/core/jobs/ and
tests/orders/test_jobs.py)."""

from __future__ import annotations

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
