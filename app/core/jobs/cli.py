"""Look after the job queue: `python -m app.core.jobs.cli failed|retry ID...|drop ID...|backlog`.

Development: `make jobs`, `make retry-job id=…`, `make drop-job id=…`. Production (VM):
`docker compose -f docker-compose.prod.yml run --rm --no-deps -T worker python -m
app.core.jobs.cli failed` (a container of its own: it works while the worker restarts).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Any, cast

import asyncpg
from pgqueuer import Queries
from pgqueuer.models import JobId

from app.core.config import SettingsError, load_settings
from app.core.jobs.worker import queries_for

# The newest error PgQueuer's log kept for each job: what a failed job died of.
_LAST_ERRORS = """
SELECT DISTINCT ON (job_id) job_id,
       concat_ws(': ', traceback->>'exception_type', traceback->>'exception_message') AS error
FROM pgqueuer_log
WHERE job_id = ANY($1::bigint[]) AND traceback IS NOT NULL
ORDER BY job_id, id DESC
"""
_STATUSES = "SELECT id, status::text FROM pgqueuer WHERE id = ANY($1::bigint[])"
# Failed or queued ones (one no handler runs), never one a worker has picked, whatever
# changed since they were read. Their log rows stay until the nightly cleanup's retention.
_DROPPABLE = ("failed", "queued")
_DROP = """
DELETE FROM pgqueuer WHERE id = ANY($1::bigint[]) AND status IN ('failed', 'queued')
RETURNING id
"""
# As the jobs_oldest_waiting_seconds gauge counts (app/core/jobs/metrics.py): a job
# waiting out a retry's back-off is not waiting yet; it is counted apart, as due later.
_BACKLOG = """
SELECT entrypoint,
       count(*) FILTER (WHERE execute_after <= now()) AS waiting,
       count(*) FILTER (WHERE execute_after > now()) AS later,
       extract(epoch FROM now() - min(execute_after) FILTER (WHERE execute_after <= now()))::float8
           AS oldest,
       (array_agg(id ORDER BY execute_after, id))[1:$1::int] AS ids
FROM pgqueuer
WHERE status = 'queued'
GROUP BY entrypoint ORDER BY entrypoint
"""


# The ids the backlog lists per job, the first due first: enough to drop a few by hand.
_BACKLOG_IDS = 10


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
        if args.command in ("retry", "drop"):
            rows = await queries.driver.fetch(_STATUSES, args.ids)
            statuses = {cast("int", row["id"]): cast("str", row["status"]) for row in rows}
            wanted = ("failed",) if args.command == "retry" else _DROPPABLE
            found = sorted(job_id for job_id, status in statuses.items() if status in wanted)
            if found and args.command == "retry":
                found, taken = await _requeue(queries, found)
                print(f"queued again: {', '.join(map(str, found)) or 'none'}")
                statuses.update(taken)
            elif found:
                gone = await queries.driver.fetch(_DROP, found)
                found = sorted(cast("int", row["id"]) for row in gone)
                print(f"dropped: {', '.join(map(str, found)) or 'none'}")
            refused = [
                f"{job_id}: {statuses[job_id]}"
                if statuses.get(job_id, "").startswith("its dedupe key")
                else f"{job_id}: not {' or '.join(wanted)} ({statuses[job_id]})"
                if job_id in statuses and job_id not in found
                else f"{job_id}: no such job in the queue (a finished job leaves it)"
                for job_id in dict.fromkeys(args.ids)
                if job_id not in found
            ]
            if refused:
                raise CommandError("\n".join(refused))
            return ""
        rows = await queries.driver.fetch(_BACKLOG, _BACKLOG_IDS)
        return "backlog:\n" + "\n".join(map(_backlog_line, rows)) if rows else "backlog: none"


def _backlog_line(row: Mapping[str, Any]) -> str:
    waiting = (
        f"{row['waiting']} waiting, the oldest for {row['oldest']:.0f} s"
        if row["waiting"]
        else "none waiting"
    )
    later = f"; {row['later']} due later (a retry's back-off, or scheduled)" if row["later"] else ""
    more = " …" if row["waiting"] + row["later"] > len(row["ids"]) else ""
    ids = f"\tids: {' '.join(map(str, row['ids']))}{more}"
    return f"{row['entrypoint']}\t{waiting}{later}{ids}"


async def _requeue(queries: Queries, ids: list[int]) -> tuple[list[int], dict[int, str]]:
    """Queue each job again on its own: one whose dedupe key another job (queued or
    running) has taken since cannot be, and must not stop the others."""
    queued, taken = [], {}
    for job_id in ids:
        try:
            await queries.requeue_jobs([JobId(job_id)])
        except asyncpg.UniqueViolationError:
            taken[job_id] = "its dedupe key is taken by a job queued or running: drop it, or wait"
        else:
            queued.append(job_id)
    return queued, taken


def _job_id(text: str) -> int:
    """A job id as PgQueuer stores it (a positive bigint), else a usage error."""
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"{text!r} is not a job id (a number from make jobs)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.core.jobs.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    failed = commands.add_parser("failed", help="jobs that used every attempt, newest first")
    failed.add_argument("--limit", type=int, default=50)
    retry = commands.add_parser("retry", help="queue failed jobs again, attempts reset")
    retry.add_argument("ids", nargs="+", type=_job_id, metavar="ID")
    drop = commands.add_parser(
        "drop", help="delete failed or queued jobs that should never run (not running ones)"
    )
    drop.add_argument("ids", nargs="+", type=_job_id, metavar="ID")
    commands.add_parser(
        "backlog",
        help="jobs waiting, per job, the oldest one's age, those due later, and their ids",
    )
    args = parser.parse_args(argv)
    try:
        if output := asyncio.run(_run(args)):
            print(output)
    except (SettingsError, CommandError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError, asyncpg.PostgresError) as error:
        print(f"error: the database: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
