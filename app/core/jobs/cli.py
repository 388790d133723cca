"""Look after the job queue: `python -m app.core.jobs.cli failed|retry ID...|backlog|alive`.

Development: `make jobs`, `make retry-job id=…`. Production (VM):
`docker compose -f docker-compose.prod.yml exec worker python -m app.core.jobs.cli failed`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

from pgqueuer.models import JobId

from app.core.config import SettingsError, load_settings
from app.core.jobs.worker import is_alive, queries_for


async def _run(args: argparse.Namespace) -> str:
    async with queries_for(load_settings()) as queries:
        if args.command == "failed":
            failed = await queries.list_failed_jobs(limit=args.limit)
            lines = [
                f"{job.id}\t{job.entrypoint}\tattempts={job.attempts}\tcreated={job.created:%F %T}"
                for job in failed
            ]
            return "\n".join(lines) or "no failed jobs"
        if args.command == "retry":
            await queries.requeue_jobs([JobId(int(job_id)) for job_id in args.ids])
            return f"queued again: {', '.join(args.ids)}"
        ages = await queries.queue_age()
        return "\n".join(f"{age.entrypoint}\t{age.model_dump_json()}" for age in ages) or "empty"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.core.jobs.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    failed = commands.add_parser("failed", help="jobs that used every attempt, newest first")
    failed.add_argument("--limit", type=int, default=50)
    retry = commands.add_parser("retry", help="queue failed jobs again, attempts reset")
    retry.add_argument("ids", nargs="+")
    commands.add_parser("backlog", help="jobs waiting, per job, and the oldest one's age")
    commands.add_parser("alive", help="the worker's healthcheck (exit status)")
    args = parser.parse_args(argv)
    if args.command == "alive":
        return 0 if is_alive() else 1
    try:
        print(asyncio.run(_run(args)))
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
