"""deploy/backup/pgbackup.py's own decisions, without pgBackRest: which backups a restore
can go on from (the recovery window), a target before it refused before anything is
touched, and a backup taken by hand beside the schedule's. The drill with the real
thing is `make restore-check`."""

from __future__ import annotations

import http.server
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

DAY = 86400.0
NO_SUCH_PID = 2**22 + 1  # above Linux's largest pid_max
NOW = 1_800_000_000.0


@pytest.fixture
def pgbackup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The program as the backup image runs it, with its defaults and a state file here."""
    for name in (
        "BACKUP_EVERY",
        "BACKUP_PITR_DAYS",
        "PGBACKREST_REPO1_RETENTION_ARCHIVE",
        "PGBACKREST_REPO1_RETENTION_ARCHIVE_TYPE",
    ):
        monkeypatch.delenv(name, raising=False)
    path = Path(__file__).resolve().parent.parent / "deploy" / "backup" / "pgbackup.py"
    spec = importlib.util.spec_from_file_location("pgbackup", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pgbackup", module)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "STATE_FILE", tmp_path / "state.json")
    return module


def backup(days_ago: float, kind: str) -> dict[str, Any]:
    stop = NOW - days_ago * DAY
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(stop))
    base = "20270101-000000F"  # the full a differential builds on: not read here
    return {
        "label": f"{stamp}F" if kind == "full" else f"{base}_{stamp}{kind[0].upper()}",
        "type": kind,
        "timestamp": {"start": stop - 600, "stop": stop},
        "database": {"id": 1},
    }


def four_weeks() -> dict[str, Any]:
    """Four weeks of the defaults' daily backups, a full every 7th, just after today's
    (the older differentials pgBackRest would have expired: they change nothing here)."""
    done = [backup(d, "full" if d % 7 == 0 else "diff") for d in range(28, -1, -1)]
    return {"db": [{"id": 1}], "backup": done}


def test_the_window_starts_where_the_kept_wal_does_not_at_the_oldest_backup(
    pgbackup: ModuleType,
) -> None:
    assert pgbackup.WAL_RETENTION == 8  # 7 days of daily backups, and the one 7 days back
    reach, older = pgbackup.window(four_weeks())
    assert len(reach) == 8
    assert pgbackup.stop_time(reach[0]) == NOW - 7 * DAY  # any second of the last 7 days
    assert [b["type"] for b in older].count("full") == 3  # weeks 2 to 4: to their end only
    assert all(pgbackup.stop_time(b) < NOW - 7 * DAY for b in older)


def test_a_young_repository_reaches_back_to_its_first_backup(pgbackup: ModuleType) -> None:
    stanza = {"db": [{"id": 1}], "backup": [backup(2, "full"), backup(1, "diff")]}
    reach, older = pgbackup.window(stanza)
    assert (len(reach), older) == (2, [])


def test_a_time_before_the_window_is_refused_before_pgbackrest_runs(
    pgbackup: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgbackup, "info", four_weeks)
    ran: list[tuple[str, ...]] = []
    monkeypatch.setattr(pgbackup.subprocess, "run", lambda args, **_: ran.append(args))
    ten_days_ago = pgbackup.utc(NOW - 10 * DAY)
    assert pgbackup.restore(ten_days_ago) == pgbackup.NO_BACKUP_REACHES
    assert ran == []  # nothing restored over the data directory
    assert pgbackup.before_window(pgbackup.utc(NOW - 6 * DAY)) is None


def test_a_label_restores_that_backup_to_its_end(
    pgbackup: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    label = four_weeks()["backup"][0]["label"]
    ran: list[list[str]] = []

    class Done:
        returncode = 0

    def fake_run(args: list[str], **_: object) -> Done:
        ran.append(args)
        return Done()

    monkeypatch.setattr(pgbackup.subprocess, "run", fake_run)
    assert pgbackup.restore(label) == 0
    assert f"--set={label}" in ran[0]
    assert "--type=immediate" in ran[0]


def test_a_backup_by_hand_never_marks_the_schedule_s_as_failed(
    pgbackup: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    def locked(*_: str, **__: object) -> str:
        raise RuntimeError("unable to acquire lock")

    monkeypatch.setattr(pgbackup, "run", locked)
    pgbackup.update_state(running_since=pgbackup.time.time())
    assert pgbackup.backup_now("full") == 1  # refused: the schedule's runs
    pgbackup.update_state(running_since=None, last_error="")
    assert pgbackup.backup_now("full") == 1  # ran, and failed
    assert pgbackup.read_state()["last_error"] == ""  # the healthcheck's state untouched
    monkeypatch.setattr(pgbackup, "run", lambda *_, **__: "")
    pgbackup.update_state(last_error="an earlier failure")
    assert pgbackup.backup_now("full") == 0
    assert pgbackup.read_state()["last_error"] == ""  # a success clears it


def test_the_schedule_waits_for_a_backup_by_hand_unless_its_process_is_gone(
    pgbackup: ModuleType,
) -> None:
    now = pgbackup.time.time()
    pgbackup.update_state(manual_since=now, manual_pid=os.getpid())
    assert pgbackup.running_since() == now  # the schedule starts none; not overdue
    assert pgbackup.backup_now("") == 1  # nor does a second one by hand
    pgbackup.update_state(manual_pid=NO_SUCH_PID)  # killed before it could say it was done
    assert pgbackup.running_since() is None


def test_a_ping_reaches_the_dead_man_s_switch_and_a_failed_one_is_only_logged(
    pgbackup: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    class Switch(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_: object) -> None:  # quiet
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Switch)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/ping/abc"
    try:
        assert pgbackup.ping(url)
    finally:
        server.server_close()
    assert seen == ["/ping/abc"]
    assert not pgbackup.ping(url)  # nothing listens there now
    assert "BACKUP_PING_URL did not answer" in capsys.readouterr().err
