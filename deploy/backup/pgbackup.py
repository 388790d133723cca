#!/usr/bin/env python3
"""The backup service of docker-compose.prod.yml: pgBackRest on a schedule, and its metrics.

    pgbackup schedule              the service's command: create the stanza, take a
                                   full backup if there is none, then one backup every
                                   BACKUP_EVERY (a full every BACKUP_FULL_EVERY, else a
                                   differential); serves metrics on BACKUP_METRICS_PORT
    pgbackup now [full|diff|incr]  take a backup now (default: what the schedule has due, else incr)
    pgbackup list                  the backups and the window a restore can reach
    pgbackup restore [TIME]        with the db stopped: restore the latest state, or
                                   the state at TIME ("2026-12-06 10:00:00+00")
    pgbackup check                 the healthcheck: fails while a backup or the WAL
                                   archive is overdue (the reason is printed)

The runbook is docs/backups.md. Standard library only: it runs on Debian's Python.
"""

# The commands run are the image's own tools (pgbackrest, psql, pg_isready) on its PATH,
# with arguments this file builds.
# ruff: noqa: S603, S607

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

SOCKET_DIR = os.environ.get("PGBACKREST_PG1_SOCKET_PATH", "/var/run/postgresql")
# The container's own in-memory /tmp: the scheduler's last result, for `pgbackup check`.
STATE_FILE = Path("/tmp/pgbackup-state.json")  # noqa: S108
# The scheduler's two threads (backups, measurements) both update the state.
STATE_LOCK = threading.Lock()
TICK_SECONDS = 15.0
RETRY_SECONDS = 300.0
INFO_TIMEOUT_SECONDS = 30.0
# A stanza or a backup as `pgbackrest info --output=json` describes it.
Json = dict[str, Any]


def log(message: str, *, error: bool = False) -> None:
    print(f"pgbackup: {message}", file=sys.stderr if error else sys.stdout, flush=True)


def seconds(text: str) -> float:
    """'30s', '15m', '6h', '1d', '7d' or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


@dataclass(frozen=True)
class Settings:
    every: float
    full_every: float
    pitr_days: float
    wal_max_age: float
    metrics_port: int

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            every=seconds(env.get("BACKUP_EVERY") or "1d"),
            full_every=seconds(env.get("BACKUP_FULL_EVERY") or "7d"),
            pitr_days=float(env.get("BACKUP_PITR_DAYS") or "7"),
            wal_max_age=seconds(env.get("BACKUP_WAL_MAX_AGE") or "5m"),
            metrics_port=int(env.get("BACKUP_METRICS_PORT") or "9188"),
        )

    def archive_retention(self) -> int:
        """pgBackRest keeps the WAL of the newest N backups (full or differential):
        N backups, one per BACKUP_EVERY, span BACKUP_PITR_DAYS."""
        return max(1, -(-int(self.pitr_days * 86400) // int(self.every)))


def pgbackrest_env() -> dict[str, str]:
    """The environment less the PGBACKREST_* settings left empty, as the entrypoint
    (entrypoint.sh) makes it: `docker compose exec` does not run the entrypoint."""
    env = {k: v for k, v in os.environ.items() if v or not k.startswith("PGBACKREST_")}
    if env.get("PGBACKREST_REPO1_CIPHER_PASS"):
        env.setdefault("PGBACKREST_REPO1_CIPHER_TYPE", "aes-256-cbc")
    return env


def pgbackrest(
    *args: str, settings: Settings | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess[str]:
    env = pgbackrest_env()
    if settings is not None:
        env.setdefault("PGBACKREST_REPO1_RETENTION_ARCHIVE_TYPE", "diff")
        env.setdefault("PGBACKREST_REPO1_RETENTION_ARCHIVE", str(settings.archive_retention()))
        # Differentials older than the window go too: past it, the weekly fulls remain.
        env.setdefault("PGBACKREST_REPO1_RETENTION_DIFF", str(settings.archive_retention()))
    try:
        return subprocess.run(
            ["pgbackrest", *args],
            env=env,
            text=True,
            capture_output=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        # An unreachable bucket makes pgBackRest retry for minutes.
        return subprocess.CompletedProcess(args, 1, "", f"no answer within {timeout:.0f} s")


def sql(query: str) -> str:
    """One value from the database, as the superuser over the shared Unix socket."""
    psql = ["psql", "-X", "-q", "-t", "-A", "-h", SOCKET_DIR, "-U", "postgres", "-d", "postgres"]
    try:
        done = subprocess.run(
            [*psql, "-c", query], text=True, capture_output=True, check=False, timeout=30
        )
    except subprocess.TimeoutExpired as error:
        raise RuntimeError("no answer within 30 s") from error
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or "psql failed")
    return done.stdout.strip()


def info() -> Json:
    """pgBackRest's view of the stanza: its backups and its WAL archive."""
    done = pgbackrest("info", "--output=json", timeout=INFO_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or done.stdout.strip())
    stanzas: list[Json] = json.loads(done.stdout)
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


def wal_timeline(backup: Json) -> int:
    start = backup.get("archive", {}).get("start")
    return int(str(start)[:8], 16) if start else 0


def due_type(stanza: Json, settings: Settings, now: float) -> str | None:
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
    if now - stop_time(fulls[-1]) >= settings.full_every:
        return "full"
    if now - stop_time(done[-1]) >= settings.every:
        return "diff"
    return None


def take_backup(kind: str, settings: Settings) -> bool:
    log(f"{kind} backup starting")
    started = time.time()
    update_state(running_since=started)
    done = pgbackrest("backup", f"--type={kind}", settings=settings)
    output = (done.stdout + done.stderr).strip()
    if done.returncode == 0:
        log(f"{kind} backup done in {time.time() - started:.1f} s")
    else:
        log(f"{kind} backup FAILED:\n{output}", error=True)
    update_state(
        running_since=None,
        last_attempt=started,
        last_duration=time.time() - started,
        last_error="" if done.returncode == 0 else output[-500:],
    )
    return done.returncode == 0


def read_state() -> dict[str, object]:
    try:
        loaded = json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def update_state(**changes: object) -> None:
    with STATE_LOCK:
        write_state(read_state() | changes)


def write_state(state: dict[str, object]) -> None:
    tmp = STATE_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(STATE_FILE)


def measure(settings: Settings) -> tuple[dict[str, float], list[str]]:
    """The metrics, and what is overdue (empty when all is well)."""
    now = time.time()
    values: dict[str, float] = {}
    problems: list[str] = []
    state = read_state()
    # A backup under way is the remedy for an old or a failed one: while it runs (for up
    # to BACKUP_EVERY) neither is a problem. On Swarm an unhealthy task is replaced,
    # which would kill the backup that a long outage made overdue, again and again.
    running_since = state.get("running_since")
    running = isinstance(running_since, float) and now - running_since < settings.every
    values["pgbackup_backup_running"] = 1 if running else 0
    try:
        stanza = info()
        values["pgbackup_backups"] = len(stanza.get("backup", []))
        done = current_backups(stanza)
        if done:
            last_age = now - stop_time(done[-1])
            values["pgbackup_last_backup_age_seconds"] = last_age
            delta = done[-1].get("info", {}).get("repository", {}).get("delta", 0)
            values["pgbackup_last_backup_size_bytes"] = float(delta)
            values["pgbackup_recovery_window_start_timestamp_seconds"] = stop_time(done[0])
            fulls = [b for b in done if b.get("type") == "full"]
            if fulls:
                values["pgbackup_last_full_backup_age_seconds"] = now - stop_time(fulls[-1])
            if last_age > settings.every + 3600 and not running:
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
        if ready > 0 and (age < 0 or age > settings.wal_max_age):
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


class MetricsHandler(BaseHTTPRequestHandler):
    """Serves the latest measurement as Prometheus text on /metrics."""

    body = b""  # replaced whole by monitor(): readers see the old or the new one

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = MetricsHandler.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # one line per scrape would drown the backup log


def prometheus_text(values: dict[str, float]) -> bytes:
    lines = []
    for name, value in values.items():
        lines += [
            f"# HELP {name} {HELP.get(name, name)}",
            f"# TYPE {name} gauge",
            f"{name} {value:.3f}",
        ]
    return ("\n".join(lines) + "\n").encode()


def schedule(settings: Settings) -> None:
    address = ("0.0.0.0", settings.metrics_port)  # noqa: S104 (the backend network)
    server = ThreadingHTTPServer(address, MetricsHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    log(
        f"a backup every {settings.every:.0f} s, a full one every {settings.full_every:.0f} s,"
        f" WAL kept for the newest {settings.archive_retention()} backups"
        f" ({settings.pitr_days:g} days)"
    )
    write_state({"started": time.time()})
    # Measured on a thread of its own, so a backup that runs for hours leaves the
    # metrics and the healthcheck current; started first, so a repository that is
    # unreachable from the start (stanza-create retrying) turns the service unhealthy.
    threading.Thread(target=monitor, args=(settings,), daemon=True).start()
    while subprocess.run(["pg_isready", "-q", "-h", SOCKET_DIR], check=False).returncode != 0:
        time.sleep(2)
    while (done := pgbackrest("stanza-create")).returncode != 0:
        log(f"stanza-create failed, retrying:\n{done.stderr or done.stdout}", error=True)
        time.sleep(10)
    while True:
        now = time.time()
        state = read_state()
        last_attempt = state.get("last_attempt")
        failed_at = (
            last_attempt if state.get("last_error") and isinstance(last_attempt, float) else 0.0
        )
        # After a failed backup, the next try waits RETRY_SECONDS.
        if now - failed_at >= RETRY_SECONDS:
            try:
                kind = due_type(info(), settings, now)
            except RuntimeError as error:
                log(f"cannot read the repository: {error}", error=True)
                kind = None
            if kind:
                take_backup(kind, settings)
        time.sleep(TICK_SECONDS)


def monitor(settings: Settings) -> None:
    warned: list[str] = []
    while True:
        values, problems = measure(settings)
        MetricsHandler.body = prometheus_text(values)
        update_state(problems=problems)
        if problems != warned:
            for problem in problems:
                log(f"WARNING {problem}", error=True)
            warned = problems
        time.sleep(TICK_SECONDS)


def list_backups() -> int:
    done = pgbackrest("info")
    print(done.stdout.strip() or done.stderr.strip())
    if done.returncode != 0:
        return done.returncode
    stanza = info()
    found = current_backups(stanza)
    if found:
        fmt = "%Y-%m-%d %H:%M:%S+00"
        start = time.strftime(fmt, time.gmtime(stop_time(found[0])))
        archive = stanza.get("archive", [])
        newest = archive[-1].get("max") if archive else None
        try:
            end = sql("SELECT date_trunc('second', last_archived_time) FROM pg_stat_archiver")
        except RuntimeError:
            end = ""
        print(f"\nrecovery window: from {start} (the end of the oldest backup)")
        print(f"                 to {end or '?'} (the newest archived WAL segment, {newest})")
        print("restore to a time inside it: make restore at='YYYY-MM-DD HH:MM:SS+00'")
    if len(found) < len(stanza.get("backup", [])):
        print("the backups under 'db (prior)' are an older PostgreSQL version's: they")
        print("restore only with that version's images (docs/backups.md, upgrading)")
    return 0


def restore(target: str | None) -> int:
    # hot_standby off: Postgres accepts no connection, so its healthcheck fails, until
    # the WAL is replayed to the target and the database is promoted.
    args = ["restore", "--delta", "--recovery-option=hot_standby=off"]
    if target:
        args += ["--type=time", f"--target={target}", "--target-action=promote"]
    log(f"restoring {'to ' + target if target else 'the latest state'}")
    done = subprocess.run(["pgbackrest", *args], env=pgbackrest_env(), check=False)
    return done.returncode


def check() -> int:
    state = read_state()
    problems = state.get("problems", [])
    if isinstance(problems, list) and problems:
        print("; ".join(str(p) for p in problems))
        return 1
    print("backups: ok")
    return 0


def main(argv: list[str]) -> int:
    settings = Settings.from_env()
    command = argv[0] if argv else "schedule"
    if command == "schedule":
        schedule(settings)
    elif command == "now":
        kind = argv[1] if len(argv) > 1 else due_type(info(), settings, time.time()) or "incr"
        return 0 if take_backup(kind, settings) else 1
    elif command == "list":
        return list_backups()
    elif command == "restore":
        return restore(argv[1] if len(argv) > 1 and argv[1] else None)
    elif command == "check":
        return check()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
