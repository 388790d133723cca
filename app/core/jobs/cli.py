"""Look after the job queue: `python -m app.core.jobs.cli failed|retry ID...|backlog|alive`.

Development: `make jobs`, `make retry-job id=…`. Production (VM):
`docker compose -f docker-compose.prod.yml exec worker python -m app.core.jobs.cli failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import cast

from pgqueuer.models import JobId

from app.core.config import SettingsError, load_settings
from app.core.jobs.worker import is_alive, queries_for

# The newest error PgQueuer's log kept for each job: what a failed job died of.
_LAST_ERRORS = """
SELECT DISTINCT ON (job_id) job_id,
       concat_ws(': ', traceback->>'exception_type', traceback->>'exception_message') AS error
FROM pgqueuer_log
WHERE job_id = ANY($1::bigint[]) AND traceback IS NOT NULL
ORDER BY job_id, id DESC
"""
_FAILED_AMONG = "SELECT id FROM pgqueuer WHERE id = ANY($1::bigint[]) AND status = 'failed'"


class CommandError(Exception):
    """What the command could not do, for stderr and a non-zero exit."""


async def _run(args: argparse.Namespace) -> str:
    async with queries_for(load_settings()) as queries:
        if args.command == "failed":
            failed = await queries.list_failed_jobs(limit=args.limit)
            rows = await queries.driver.fetch(_LAST_ERRORS, [job.id for job in failed])
            errors = {row["job_id"]: row["error"] for row in rows}
            lines = [
                f"{job.id}\t{job.entrypoint}\tattempts={job.attempts}\tcreated={job.created:%F %T}"
                f"\t{errors.get(job.id, 'no error logged')}"
                for job in failed
            ]
            return "failed:\n" + "\n".join(lines) if lines else "failed: none"
        if args.command == "retry":
            rows = await queries.driver.fetch(_FAILED_AMONG, args.ids)
            found = sorted(cast("int", row["id"]) for row in rows)
            if found:
                await queries.requeue_jobs([JobId(job_id) for job_id in found])
            missing = [str(job_id) for job_id in args.ids if job_id not in found]
            queued = f"queued again: {', '.join(map(str, found)) or 'none'}"
            if missing:
                raise CommandError(
                    f"{queued}\nnot failed jobs (unknown, or not failed): {', '.join(missing)}"
                )
            return queued
        ages = await queries.queue_age()
        lines = [
            f"{age.entrypoint}\t{age.queued_count} waiting, "
            f"the oldest for {age.oldest_age_seconds:.0f} s"
            for age in ages
        ]
        return "backlog:\n" + "\n".join(lines) if lines else "backlog: none waiting"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.core.jobs.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    failed = commands.add_parser("failed", help="jobs that used every attempt, newest first")
    failed.add_argument("--limit", type=int, default=50)
    retry = commands.add_parser("retry", help="queue failed jobs again, attempts reset")
    retry.add_argument("ids", nargs="+", type=int, metavar="ID")
    commands.add_parser("backlog", help="jobs waiting, per job, and the oldest one's age")
    commands.add_parser("alive", help="the worker's healthcheck (exit status)")
    args = parser.parse_args(argv)
    if args.command == "alive":
        return 0 if is_alive() else 1
    try:
        print(asyncio.run(_run(args)))
    except (SettingsError, CommandError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
