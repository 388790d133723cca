"""The worker's healthchecks, two files its process touches on a tmpfs:

    python -m app.core.jobs.alive           the worker reached its database within 30 s
                                            (the worker touches ALIVE_FILE after each
                                            sample of the queue): startup and readiness
    python -m app.core.jobs.alive --loop    its event loop turned within 30 s, database
                                            or not (LOOP_FILE): liveness

Liveness must not depend on Postgres: a worker reconnects by itself after an outage
(app/core/jobs/worker.py, RESTART_DELAY), and an orchestrator that restarted it for one
would add its restart back-off to the outage, on every worker at once.

Standard library only, on purpose: a healthcheck starts a new Python process each time,
and importing the app's database stack first took seconds on a loaded host, past the
check's timeout, so a healthy worker read as unhealthy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

ALIVE_FILE = Path("/tmp/worker-alive")  # noqa: S108  # the container's own tmpfs
LOOP_FILE = Path("/tmp/worker-loop")  # noqa: S108  # the container's own tmpfs
ALIVE_WITHIN_SECONDS = 30.0


def touched_within(path: Path, seconds: float = ALIVE_WITHIN_SECONDS) -> bool:
    """`path` exists and was touched less than `seconds` ago."""
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


def is_alive() -> bool:
    """The worker reached its database within ALIVE_WITHIN_SECONDS."""
    return touched_within(ALIVE_FILE)


def loop_turns() -> bool:
    """The worker's event loop turned within ALIVE_WITHIN_SECONDS."""
    return touched_within(LOOP_FILE)


if __name__ == "__main__":
    check = loop_turns if sys.argv[1:] == ["--loop"] else is_alive
    sys.exit(0 if check() else 1)
