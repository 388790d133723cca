"""The worker's healthcheck: `python -m app.core.jobs.alive` exits 0 while the worker's
database connection answers (the worker touches ALIVE_FILE after each sample of the
queue), 1 otherwise.

Standard library only, on purpose: a healthcheck starts a new Python process each time,
and importing the app's database stack first took seconds on a loaded host, past the
check's timeout, so a healthy worker read as unhealthy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ALIVE_FILE = Path("/tmp/worker-alive")  # noqa: S108  # the container's own tmpfs
ALIVE_WITHIN_SECONDS = 30.0


def is_alive() -> bool:
    """The worker reached its database within ALIVE_WITHIN_SECONDS."""
    try:
        return time.time() - ALIVE_FILE.stat().st_mtime < ALIVE_WITHIN_SECONDS
    except FileNotFoundError:
        return False


if __name__ == "__main__":
    sys.exit(0 if is_alive() else 1)
