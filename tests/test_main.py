"""The service's entry point, `app.main`, as Gunicorn and uvicorn import it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VALID = {"DATABASE_URL": "postgresql://app:pw@db:5432/app", "REDIS_URL": "redis://redis:6379/0"}


def test_app_refuses_to_start_on_bad_settings_without_printing_secrets() -> None:
    """The real entry point, in a fresh process: exit 1 with a message, no traceback."""
    secret = "s3cret-in-a-bad-url"
    env = {**os.environ, **VALID, "DATABASE_URL": f"mysql://app:{secret}@db/app"}
    env["ENVIRONMENT"] = "staging"
    result = subprocess.run(  # our own interpreter, a fixed command
        [sys.executable, "-c", "import app.main"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "invalid configuration" in result.stderr
    assert "ENVIRONMENT:" in result.stderr
    assert "DATABASE_URL: URL scheme should be" in result.stderr
    assert "Traceback" not in result.stderr
    assert secret not in result.stderr + result.stdout
