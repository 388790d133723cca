#!/usr/bin/env python3
"""The backup service of docker-compose.prod.yml: pgBackRest on a schedule, and its metrics.

    pgbackup schedule              the service's command: create the stanza, take a
                                   full backup if there is none, then one backup every
                                   BACKUP_EVERY (a full every BACKUP_FULL_EVERY, else a
                                   differential); serves metrics on BACKUP_METRICS_PORT
    pgbackup now [full|diff|incr]  take a backup now (default: what the schedule has due, else incr)
    pgbackup list                  the backups and the window a restore can reach
    pgbackup restore [TIME|LABEL]  with the db stopped: restore the latest state, the
                                   state at TIME ("2026-12-06 10:00:00+00"), or a
                                   backup older than the window to its end (LABEL)
    pgbackup check                 the healthcheck: fails while a backup or the WAL
                                   archive is overdue (the reason is printed)

The runbook is docs/backups.md. Debian's Python and prometheus-client: nothing from pip.
"""

# The commands run are the image's own tools (pgbackrest, psql, pg_isready) on its PATH,
# with arguments this file builds.
# ruff: noqa: S603, S607

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


def seconds(text: str) -> float:
    """'30s', '15m', '6h', '1d', '7d' or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


EVERY = seconds(os.environ.get("BACKUP_EVERY") or "1d")
FULL_EVERY = seconds(os.environ.get("BACKUP_FULL_EVERY") or "7d")
PITR_DAYS = float(os.environ.get("BACKUP_PITR_DAYS") or "7")
WAL_MAX_AGE = seconds(os.environ.get("BACKUP_WAL_MAX_AGE") or "5m")
METRICS_PORT = int(os.environ.get("BACKUP_METRICS_PORT") or "9188")
# A dead man's switch (healthchecks.io, Uptime Kuma's push monitor, Cronitor...): pinged
# every PING_EVERY_SECONDS while nothing is overdue. The pings stop when backups or the
# archive fall behind, and when the VM, Docker or this service is gone: the service
# then tells a person, which nothing on the VM itself can.
PING_URL = os.environ.get("BACKUP_PING_URL", "")
PING_EVERY_SECONDS = 300.0
PING_TIMEOUT_SECONDS = 10.0
# pgBackRest keeps the WAL from the start of the newest N backups (full or differential)
# onward. N - 1 intervals of BACKUP_EVERY must span BACKUP_PITR_DAYS: just after a backup,
# the oldest of N daily ones is N - 1 days old.
WAL_RETENTION = max(1, math.ceil(PITR_DAYS * 86400 / EVERY)) + 1
# What pgBackRest counts for that retention (repo1-retention-archive-type), by type.
RETENTION_COUNTS = {"full": {"full"}, "diff": {"full", "diff"}, "incr": {"full", "diff", "incr"}}
# A backup's label, for a restore to the end of a backup older than the window.
LABEL = re.compile(r"^\d{8}-\d{6}F(_\d{8}-\d{6}[DI])?$")
# pgBackRest's exit code for "no backup set reaches that target" (nothing touched).
NO_BACKUP_REACHES = 75
SOCKET_DIR = os.environ.get("PGBACKREST_PG1_SOCKET_PATH", "/var/run/postgresql")
# The container's own in-memory /tmp: the scheduler's last result, for `pgbackup check`.
STATE_FILE = Path("/tmp/pgbackup-state.json")  # noqa: S108
# The scheduler's two threads (backups, measurements) both update the state.
STATE_LOCK = threading.Lock()
TICK_SECONDS = 15.0
RETRY_SECONDS = 300.0
# A stanza or a backup as `pgbackrest info --output=json` describes it.
Json = dict[str, Any]


def log(message: str, *, error: bool = False) -> None:
    print(f"pgbackup: {message}", file=sys.stderr if error else sys.stdout, flush=True)


def pgbackrest_env() -> dict[str, str]:
    """The environment as the entrypoint (entrypoint.sh) makes it, which `docker compose
    exec` does not run, with the WAL retention that BACKUP_PITR_DAYS implies."""
    env = {k: v for k, v in os.environ.items() if v or not k.startswith("PGBACKREST_")}
    if env.get("PGBACKREST_REPO1_CIPHER_PASS"):
        env.setdefault("PGBACKREST_REPO1_CIPHER_TYPE", "aes-256-cbc")
    env.setdefault("PGBACKREST_REPO1_RETENTION_ARCHIVE_TYPE", "diff")
    env.setdefault("PGBACKREST_REPO1_RETENTION_ARCHIVE", str(WAL_RETENTION))
    # Differentials older than the window go too: past it, the weekly fulls remain.
    env.setdefault("PGBACKREST_REPO1_RETENTION_DIFF", str(WAL_RETENTION))
    return env


ENV = pgbackrest_env()


def run(*command: str, timeout: float | None = None) -> str:
    """The command's output; RuntimeError with what it printed if it fails."""
    try:
        done = subprocess.run(
            command, env=ENV, capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired as error:
        # An unreachable bucket makes pgBackRest retry for minutes.
        raise RuntimeError(f"no answer within {timeout:.0f} s") from error
    if done.returncode != 0:
        # pgBackRest prints its errors on stdout (PGBACKREST_LOG_LEVEL_STDERR is off).
        raise RuntimeError((done.stdout + done.stderr).strip() or f"{command[0]} failed")
    return done.stdout.strip()


def sql(query: str) -> str:
    """One value from the database, as the superuser over the shared Unix socket."""
    psql = ("psql", "-X", "-q", "-t", "-A", "-h", SOCKET_DIR, "-U", "postgres", "-d", "postgres")
    return run(*psql, "-c", query, timeout=30)


def info() -> Json:
    """pgBackRest's view of the stanza: its backups and its WAL archive."""
    stanzas: list[Json] = json.loads(run("pgbackrest", "info", "--output=json", timeout=30))
    return stanzas[0] if stanzas else {}


def current_backups(stanza: Json) -> list[Json]:
    """The backups of the stanza's current database. After a major-version upgrade
    (`pgbackrest stanza-upgrade`, docs/backups.md) the stanza lists the older version's
    backups too: they restore only with that version's image, and the new version's
    data needs a full backup of its own."""
    backups: list[Json] = stanza.get("backup", [])
    current = max((db.get("id", 0) for db in stanza.get("db", [])), default=None)
    if current is None:
        return backups
    return [b for b in backups if b.get("database", {}).get("id", 0) == current]


def stop_time(backup: Json) -> float:
    return float(backup["timestamp"]["stop"])


def window(stanza: Json) -> tuple[list[Json], list[Json]]:
    """The backups a restore can go on from to any later second, and the older ones, kept
    without their later WAL: each restores only to its own end. pgBackRest keeps the WAL
    from the start of the newest repo1-retention-archive backups of the counted types."""
    done = current_backups(stanza)
    counted = RETENTION_COUNTS.get(ENV.get("PGBACKREST_REPO1_RETENTION_ARCHIVE_TYPE", "full"))
    kept = int(ENV.get("PGBACKREST_REPO1_RETENTION_ARCHIVE") or 0)
    anchors = [n for n, b in enumerate(done) if b.get("type") in (counted or {"full"})]
    if not kept or len(anchors) <= kept:
        return done, []
    first = anchors[-kept]
    return done[first:], done[:first]


def wal_timeline(backup: Json) -> int:
    start = backup.get("archive", {}).get("start")
    return int(str(start)[:8], 16) if start else 0


def due_type(stanza: Json, now: float) -> str | None:
    """The type of backup the schedule wants now, or None."""
    done = current_backups(stanza)
    fulls = [b for b in done if b.get("type") == "full"]
    if not fulls:
        return "full"
    # After a restore the database runs on a new timeline: start a new chain from it.
    try:
        timeline = int(sql("SELECT timeline_id FROM pg_control_checkpoint()"))
    except (RuntimeError, ValueError):
        timeline = 0
    if timeline and timeline != wal_timeline(done[-1]):
        return "full"
    if now - stop_time(fulls[-1]) >= FULL_EVERY:
        return "full"
    if now - stop_time(done[-1]) >= EVERY:
        return "diff"
    return None


def take_backup(kind: str, *, scheduled: bool = True) -> bool:
    """One backup, marked running in the state the healthcheck reads (the schedule's
    under `running_since`, one taken by hand, `pgbackup now` in another process, under
    `manual_since`: the schedule starts none while either runs). The schedule's records
    its outcome; one by hand records only a success, which clears an earlier failure:
    its own failure is the operator's to read, not the schedule's."""
    log(f"{kind} backup starting")
    started = time.time()
    marker = "running_since" if scheduled else "manual_since"
    update_state(**{marker: started}, **({} if scheduled else {"manual_pid": os.getpid()}))
    error = "interrupted"
    try:
        run("pgbackrest", "backup", f"--type={kind}")
        log(f"{kind} backup done in {time.time() - started:.1f} s")
        error = ""
    except RuntimeError as failure:
        log(f"{kind} backup FAILED:\n{failure}", error=True)
        error = str(failure)[-500:]
    finally:
        outcome = {"last_attempt": started, "last_duration": time.time() - started}
        update_state(
            **{marker: None},
            **({**outcome, "last_error": error} if scheduled or not error else {}),
        )
    return not error


def running_since() -> float | None:
    """When the backup under way (the schedule's, or one by hand) began, if one is."""
    state = read_state()
    for marker in ("running_since", "manual_since"):
        since = state.get(marker)
        if isinstance(since, float) and time.time() - since < EVERY:
            if marker == "manual_since" and not alive(state.get("manual_pid")):
                continue  # its process was killed before it could say it was done
            return since
    return None


def alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state() -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return state


def update_state(**changes: object) -> None:
    with STATE_LOCK:
        # A file of this process's own: `pgbackup now` runs beside the schedule.
        tmp = STATE_FILE.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(read_state() | changes))
        tmp.replace(STATE_FILE)


def measure() -> tuple[dict[str, float], list[str]]:
    """The metrics, and what is overdue (empty when all is well)."""
    now = time.time()
    values: dict[str, float] = {}
    problems: list[str] = []
    state = read_state()
    # A backup under way is the remedy for an old or a failed one: while it runs (for up
    # to BACKUP_EVERY) neither is a problem. On Swarm an unhealthy task is replaced,
    # which would kill the backup that a long outage made overdue, again and again.
    running = running_since() is not None
    values["pgbackup_backup_running"] = float(running)
    try:
        stanza = info()
        values["pgbackup_backups"] = len(stanza.get("backup", []))
        done = current_backups(stanza)
        if done:
            last_age = now - stop_time(done[-1])
            values["pgbackup_last_backup_age_seconds"] = last_age
            delta = done[-1].get("info", {}).get("repository", {}).get("delta", 0)
            values["pgbackup_last_backup_size_bytes"] = float(delta)
            reach, _ = window(stanza)
            if reach:
                values["pgbackup_recovery_window_start_timestamp_seconds"] = stop_time(reach[0])
            fulls = [b for b in done if b.get("type") == "full"]
            if fulls:
                values["pgbackup_last_full_backup_age_seconds"] = now - stop_time(fulls[-1])
            if last_age > EVERY + 3600 and not running:
                problems.append(f"the last backup is {last_age / 3600:.1f} h old")
        values["pgbackup_repository_up"] = 1
    # TypeError, AttributeError: pgBackRest's JSON in a shape not expected; reported as an
    # unreadable repository rather than stopping the metrics thread.
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as error:
        values["pgbackup_repository_up"] = 0
        problems.append(f"the backup repository cannot be read: {error}")
    if state.get("last_error") and not running:
        problems.append(f"the last backup failed: {state['last_error']}")
    try:
        row = sql(
            "SELECT coalesce(extract(epoch FROM now() - last_archived_time), -1),"
            " (last_failed_time > coalesce(last_archived_time, '-infinity'))::int,"
            " (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready')"
            " FROM pg_stat_archiver"
        )
        age, failing, ready = (float(part or 0) for part in row.split("|"))
        if age >= 0:
            values["pgbackup_wal_last_archived_age_seconds"] = age
        values["pgbackup_wal_archive_failing"] = failing
        values["pgbackup_wal_ready_segments"] = ready
        # An idle database has nothing to archive: only WAL waiting makes age matter.
        if ready > 0 and (age < 0 or age > WAL_MAX_AGE):
            problems.append(
                f"{ready:.0f} WAL segments wait to be archived, the last archived {age:.0f} s ago"
            )
        elif failing and ready > 1:
            problems.append("the archive_command is failing (docker compose logs db)")
        values["pgbackup_database_up"] = 1
    except (RuntimeError, ValueError) as error:
        values["pgbackup_database_up"] = 0
        problems.append(f"the database cannot be read: {error}")
    values["pgbackup_healthy"] = 0 if problems else 1
    return values, problems


HELP = {
    "pgbackup_backups": "Backups in the repository.",
    "pgbackup_last_backup_age_seconds": "Seconds since the newest backup (any type) finished.",
    "pgbackup_last_full_backup_age_seconds": "Seconds since the newest full backup finished.",
    "pgbackup_last_backup_size_bytes": "Bytes the newest backup added to the repository.",
    "pgbackup_recovery_window_start_timestamp_seconds": "The earliest time a restore can reach.",
    "pgbackup_backup_running": "1 while a backup runs.",
    "pgbackup_repository_up": "1 if the backup repository could be read.",
    "pgbackup_wal_last_archived_age_seconds": "Seconds since Postgres last archived a WAL segment.",
    "pgbackup_wal_archive_failing": "1 if the archive_command's latest attempt failed.",
    "pgbackup_wal_ready_segments": "WAL segments waiting to be archived (16 MiB of disk each).",
    "pgbackup_database_up": "1 if the database answered.",
    "pgbackup_healthy": "1 if no backup and no WAL segment is overdue (pgbackup check).",
}


class LatestMeasurement(Collector):
    """What a scrape of /metrics reads: a metric not measured (no backup yet) is absent."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}  # replaced whole: a scrape sees the old or the new

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self.values.items():
            yield GaugeMetricFamily(name, HELP[name], value=value)


def ping(url: str) -> bool:
    """One ping of the dead man's switch; a failure is logged, never raised."""
    try:
        with urllib.request.urlopen(url, timeout=PING_TIMEOUT_SECONDS):  # noqa: S310  # the operator's URL
            return True
    except (OSError, ValueError) as error:
        log(f"BACKUP_PING_URL did not answer: {error}", error=True)
        return False


def monitor(latest: LatestMeasurement) -> NoReturn:
    warned: list[str] = []
    pinged = -math.inf
    while True:
        latest.values, problems = measure()
        update_state(problems=problems)
        if problems != warned:
            for problem in problems:
                log(f"WARNING {problem}", error=True)
            warned = problems
        if PING_URL and not problems and time.monotonic() - pinged >= PING_EVERY_SECONDS:
            ping(PING_URL)
            pinged = time.monotonic()
        time.sleep(TICK_SECONDS)


def schedule() -> NoReturn:
    latest = LatestMeasurement()
    REGISTRY.register(latest)
    start_http_server(METRICS_PORT)
    log(
        f"a backup every {EVERY:.0f} s, a full one every {FULL_EVERY:.0f} s,"
        f" WAL kept for the newest {WAL_RETENTION} backups ({PITR_DAYS:g} days)"
    )
    STATE_FILE.unlink(missing_ok=True)
    # Measured on a thread of its own, so a backup that runs for hours leaves the
    # metrics and the healthcheck current; started first, so a repository that is
    # unreachable from the start (stanza-create retrying) turns the service unhealthy.
    threading.Thread(target=monitor, args=(latest,), daemon=True).start()
    while subprocess.run(["pg_isready", "-q", "-h", SOCKET_DIR], check=False).returncode != 0:
        time.sleep(2)
    while True:
        try:
            run("pgbackrest", "stanza-create")
            break
        except RuntimeError as error:
            log(f"stanza-create failed, retrying:\n{error}", error=True)
            time.sleep(10)
    while True:
        state = read_state()
        # After a failed backup, the next try waits RETRY_SECONDS.
        failed_at = state.get("last_attempt", 0.0) if state.get("last_error") else 0.0
        if time.time() - failed_at >= RETRY_SECONDS:
            try:
                kind = due_type(info(), time.time())
            except RuntimeError as error:
                log(f"cannot read the repository: {error}", error=True)
                kind = None
            if kind and running_since() is None:  # not beside one taken by hand
                take_backup(kind)
        time.sleep(TICK_SECONDS)


def list_backups() -> int:
    try:
        print(run("pgbackrest", "info"))
        stanza = info()
    except RuntimeError as error:
        print(error)
        return 1
    found = current_backups(stanza)
    reach, older = window(stanza)
    if reach:
        start = utc(stop_time(reach[0]))
        archive = stanza.get("archive", [])
        newest = archive[-1].get("max") if archive else None
        try:
            end = sql("SELECT date_trunc('second', last_archived_time) FROM pg_stat_archiver")
        except RuntimeError:
            end = ""
        print(f"\nrecovery window: from {start} (the end of {reach[0].get('label')})")
        print(f"                 to {end or '?'} (the newest archived WAL segment, {newest})")
        print("restore to a time inside it: make restore at='YYYY-MM-DD HH:MM:SS+00'")
    if older:
        print("\nolder backups, without the WAL after their end: each restores to its end only,")
        print("make restore at=LABEL")
        for backup in older:
            print(f"  {backup.get('label')}  ended {utc(stop_time(backup))}")
    if len(found) < len(stanza.get("backup", [])):
        print("the backups under 'db (prior)' are an older PostgreSQL version's: they")
        print("restore only with that version's images (docs/backups.md, upgrading)")
    return 0


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime(timestamp))


def before_window(target: str) -> str | None:
    """Why no backup reaches `target`, a time before the window (a restore there would
    overwrite the data directory, then stop short of the target); None if it may."""
    try:
        wanted = datetime.fromisoformat(target).timestamp()
    except ValueError:
        return None  # pgBackRest reads it, or refuses it, itself
    reach, _ = window(info())
    if not reach or wanted >= stop_time(reach[0]):
        return None
    return (
        f"{target} is before the recovery window, which starts at {utc(stop_time(reach[0]))};"
        " an older backup restores to its end only (make backups lists them: make restore"
        " at=LABEL)"
    )


def restore(target: str) -> int:
    # hot_standby off: Postgres accepts no connection, so its healthcheck fails, until
    # the WAL is replayed to the target and the database is promoted.
    args = ["restore", "--delta", "--recovery-option=hot_standby=off"]
    if LABEL.fullmatch(target):
        # The backup's own end: its WAL up to the point it is consistent, no further.
        args += [f"--set={target}", "--type=immediate", "--target-action=promote"]
    elif target:
        try:
            refused = before_window(target)
        except (RuntimeError, ValueError, KeyError, TypeError) as error:
            refused = None  # the repository unread: pgBackRest's own restore says why
            log(f"the recovery window could not be read: {error}", error=True)
        if refused:
            log(refused, error=True)
            return NO_BACKUP_REACHES
        args += ["--type=time", f"--target={target}", "--target-action=promote"]
    log(f"restoring {'to ' + target if target else 'the latest state'}")
    return subprocess.run(["pgbackrest", *args], env=ENV, check=False).returncode


def check() -> int:
    problems = read_state().get("problems")
    print("; ".join(map(str, problems)) if problems else "backups: ok")
    return 1 if problems else 0


def backup_now(kind: str) -> int:
    if kind not in ("", "full", "diff", "incr"):
        # A usage error, not a failed backup: the healthcheck must not turn on a typo.
        print(f"pgbackup now: {kind!r} is not full, diff or incr", file=sys.stderr)
        return 2
    if (since := running_since()) is not None:
        print(
            f"pgbackup now: a backup runs since {utc(since)}: it is the one to wait for"
            " (pgbackup list when it is done)",
            file=sys.stderr,
        )
        return 1
    kind = kind or due_type(info(), time.time()) or "incr"
    return 0 if take_backup(kind, scheduled=False) else 1


def main(argv: list[str]) -> int:
    command, *args = argv or ["schedule"]
    arg = args[0] if args else ""
    if command == "schedule":
        schedule()
    if command == "now":
        return backup_now(arg)
    if command == "list":
        return list_backups()
    if command == "restore":
        return restore(arg)
    if command == "check":
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
