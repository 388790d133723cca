"""A real worker process for tests/core/jobs/test_worker_process.py: the core runner
(`app.core.jobs.worker.run`, with PgQueuer's own SIGTERM handling) and one slow job.

    SLOW_JOB_NAME=probe SLOW_JOB_SECONDS=3 SLOW_JOB_LOG=log python -m tests.core.jobs.slow_worker

The job appends a JSON line to SLOW_JOB_LOG when it starts and another once it has
slept SLOW_JOB_SECONDS: a file, so the test sees what a process did even after that
process was killed. Settings come from the environment, and the logs go out, as for
`python -m app.worker`.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import load_settings
from app.core.jobs.worker import Jobs, run
from app.core.logging import configure_logging


def record(log: Path, event: str, payload: dict[str, Any]) -> None:
    line = {"event": event, "pid": os.getpid(), "at": time.time(), **payload}
    with log.open("ab") as file:  # one short append per line: whole lines, in order
        file.write(orjson.dumps(line) + b"\n")


def create_jobs(name: str, seconds: float, log: Path) -> Jobs:
    jobs = Jobs()

    @jobs.job(name)
    async def slow(session: AsyncSession, payload: dict[str, Any]) -> None:
        record(log, "started", payload)
        await session.execute(text("SELECT 1"))  # in its transaction, as a real job is
        await asyncio.sleep(seconds)
        record(log, "done", payload)  # the worker commits next, then deletes the job

    return jobs


def main() -> int:
    jobs = create_jobs(
        os.environ["SLOW_JOB_NAME"],
        float(os.environ["SLOW_JOB_SECONDS"]),
        Path(os.environ["SLOW_JOB_LOG"]),
    )
    settings = load_settings()
    configure_logging(settings.log_level, settings.effective_log_format)
    run(settings, jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
