"""gunicorn_conf.py: how the environment maps to Gunicorn's settings."""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from app.core.config import Settings
from gunicorn_conf import (
    available_cpus,
    cgroup_cpu_limit,
    check_connection_budget,
    db_connections_max,
    default_workers,
)

ROOT = Path(__file__).resolve().parent.parent
SERVER_VARIABLES = (
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "GUNICORN_TIMEOUT",
    "GUNICORN_GRACEFUL_TIMEOUT",
    "GUNICORN_KEEPALIVE",
    "GUNICORN_MAX_REQUESTS",
    "GUNICORN_MAX_REQUESTS_JITTER",
    "FORWARDED_ALLOW_IPS",
    "METRICS_PORT",
    "PROMETHEUS_MULTIPROC_DIR",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "ENVIRONMENT",
)


def load_config(monkeypatch: pytest.MonkeyPatch, **env: str) -> dict[str, Any]:
    """The module's globals as Gunicorn would read them, under `env`."""
    for name in SERVER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(ROOT / "gunicorn_conf.py"))


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(monkeypatch)
    assert config["bind"] == "0.0.0.0:8000"
    assert config["worker_class"] == "uvicorn_worker.UvicornWorker"
    assert config["workers"] == default_workers(available_cpus())
    assert (config["timeout"], config["graceful_timeout"], config["keepalive"]) == (30, 20, 65)
    assert (config["max_requests"], config["max_requests_jitter"]) == (5_000_000, 500_000)
    assert config["worker_tmp_dir"] == "/dev/shm"
    assert config["forwarded_allow_ips"] == "127.0.0.1"
    assert config["control_socket_disable"] is True
    assert config["EFFECTIVE"]["metrics_port"] == 9000
    assert config["EFFECTIVE"]["prometheus_multiproc_dir"] == "/dev/shm/prometheus"
    # Each worker imports the app itself, after the fork: no pool or client made
    # in the master can be inherited.
    assert config.get("preload_app", False) is False


# What one worker served of GET /health at full load in `make bench` once the app's
# per-request cost is near the server's own (docs/benchmarks.md), in requests/s.
PEAK_REQUESTS_PER_WORKER = 8_000


def test_recycling_is_rare_even_at_full_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # A recycle costs a worker start and resets its connections: at most one every
    # ~10 minutes per worker at full load, and far fewer at ordinary loads.
    config = load_config(monkeypatch)
    assert config["max_requests"] / PEAK_REQUESTS_PER_WORKER >= 600
    # Jitter spreads two workers' restarts apart, but never makes a recycle frequent.
    assert 0 < config["max_requests_jitter"] <= config["max_requests"] // 2


def test_environment_maps_to_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(
        monkeypatch,
        HOST="127.0.0.1",
        PORT="9000",
        WEB_CONCURRENCY="7",
        GUNICORN_TIMEOUT="60",
        GUNICORN_GRACEFUL_TIMEOUT="25",
        GUNICORN_KEEPALIVE="10",
        GUNICORN_MAX_REQUESTS="0",
        GUNICORN_MAX_REQUESTS_JITTER="0",
        FORWARDED_ALLOW_IPS="10.0.0.2",
    )
    assert config["bind"] == "127.0.0.1:9000"
    assert config["workers"] == 7
    assert (config["timeout"], config["graceful_timeout"], config["keepalive"]) == (60, 25, 10)
    assert (config["max_requests"], config["max_requests_jitter"]) == (0, 0)
    assert config["forwarded_allow_ips"] == "10.0.0.2"


def test_zero_workers_means_derive_from_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(monkeypatch, WEB_CONCURRENCY="0")["workers"] >= 2


def test_logs_use_the_apps_structured_format(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(monkeypatch, ENVIRONMENT="production")
    formatter = config["logconfig_dict"]["formatters"]["structured"]
    assert "JSONRenderer" in repr(formatter["processors"])
    assert config["logconfig_dict"]["loggers"]["gunicorn.error"]["propagate"] is True
    assert config["errorlog"] == "-"


def test_log_level_reaches_gunicorn_and_its_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    # Gunicorn resets its logger to `loglevel` (default info) after the logging config.
    assert load_config(monkeypatch, LOG_LEVEL="WARNING")["loglevel"] == "warning"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(
    ("cpu_max", "limit"),
    [("max 100000\n", None), ("150000 100000\n", 1.5), ("400000 100000\n", 4.0)],
)
def test_cgroup_v2_quota(tmp_path: Path, cpu_max: str, limit: float | None) -> None:
    write(tmp_path / "cpu.max", cpu_max)
    assert cgroup_cpu_limit(tmp_path) == limit


@pytest.mark.parametrize(("quota", "limit"), [("-1", None), ("50000", 0.5), ("300000", 3.0)])
def test_cgroup_v1_quota(tmp_path: Path, quota: str, limit: float | None) -> None:
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", quota)
    write(tmp_path / "cpu" / "cpu.cfs_period_us", "100000")
    assert cgroup_cpu_limit(tmp_path) == limit


def test_no_cgroup_files_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0))


def test_quota_caps_the_cpus_seen(tmp_path: Path) -> None:
    write(tmp_path / "cpu.max", "50000 100000")
    assert available_cpus(tmp_path) == 0.5


@pytest.mark.parametrize(
    ("cpus", "workers"), [(0.5, 2), (1, 2), (1.5, 2), (2, 2), (3.2, 4), (8, 8)]
)
def test_default_workers(cpus: float, workers: int) -> None:
    assert default_workers(cpus) == workers


def run_conf(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in SERVER_VARIABLES}
    return subprocess.run(
        [sys.executable, "gunicorn_conf.py"],
        cwd=ROOT,
        env=clean | env,
        capture_output=True,
        text=True,
        check=False,
    )


def test_prints_the_effective_configuration() -> None:
    result = run_conf(WEB_CONCURRENCY="3", PORT="8123")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed["workers"] == 3
    assert printed["bind"] == "0.0.0.0:8123"
    assert printed["db_connections_max"] == 3 * (10 + 0 + 0)  # pool, overflow, no near cache
    assert printed["db_connection_budget"] == 90
    assert "warning" not in result.stderr


def test_prints_a_warning_over_the_connection_budget() -> None:
    result = run_conf(
        WEB_CONCURRENCY="8", DB_POOL_SIZE="10", DB_MAX_OVERFLOW="5", CACHE_LOCAL_TTL_SECONDS="5"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["db_connections_max"] == 8 * (10 + 5 + 1)
    assert "128 database connections at peak, over DB_CONNECTION_BUDGET (90)" in result.stderr


def pool_settings(**values: int) -> Settings:
    return Settings(_env_file=None, database_url="postgresql://app:app@db/app", **values)  # type: ignore[arg-type]


def test_connection_budget() -> None:
    settings = pool_settings(
        db_pool_size=10, db_max_overflow=19, db_connection_budget=90, cache_local_ttl_seconds=5
    )
    assert db_connections_max(settings, 3) == 90  # with the near cache's listener, one a worker
    assert check_connection_budget(settings, 3) is None  # exactly the budget is fine
    warning = check_connection_budget(settings, 4)
    assert warning is not None
    assert "4 workers x (DB_POOL_SIZE 10 + DB_MAX_OVERFLOW 19 + cache listener 1) = 120" in warning
    no_copies = pool_settings(db_pool_size=10, db_max_overflow=20)
    assert db_connections_max(no_copies, 3) == 90  # the near cache off (default): no listener
    unchecked = pool_settings(db_pool_size=10, db_max_overflow=20, db_connection_budget=0)
    assert check_connection_budget(unchecked, 100) is None


class FakeArbiter:
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.log = self

    def warning(self, message: str, *args: object) -> None:
        self.warnings.append(message % args)


def test_master_warns_loudly_over_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(monkeypatch, WEB_CONCURRENCY="10")
    monkeypatch.setenv("METRICS_ENABLED", "false")
    arbiter = FakeArbiter()
    config["on_starting"](arbiter)
    assert arbiter.warnings == [
        "DATABASE CONNECTION BUDGET EXCEEDED: " + check_connection_budget(pool_settings(), 10)  # type: ignore[operator]
    ]


def test_master_empties_the_metrics_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    write(directory / "counter_123.db", "stale")
    write(directory / "notes.txt", "not prometheus_client's: kept")
    config = load_config(monkeypatch, PROMETHEUS_MULTIPROC_DIR=str(directory))
    monkeypatch.setenv("METRICS_ENABLED", "true")
    config["on_starting"](FakeArbiter())
    assert sorted(path.name for path in directory.iterdir()) == ["notes.txt"]
    # The workers, forked after this, inherit it: prometheus_client's multiprocess switch.
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)


def test_metrics_off_means_no_multiprocess_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(monkeypatch, PROMETHEUS_MULTIPROC_DIR="/somewhere")
    monkeypatch.setenv("METRICS_ENABLED", "false")
    config["on_starting"](FakeArbiter())
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_master_refuses_to_start_on_bad_app_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(monkeypatch)
    monkeypatch.setenv("DB_POOL_SIZE", "0")
    with pytest.raises(SystemExit) as stopped:
        config["on_starting"](None)
    assert "DB_POOL_SIZE: Input should be greater than or equal to 1" in str(stopped.value)


def test_bad_value_is_refused_by_name() -> None:
    result = run_conf(WEB_CONCURRENCY="many")
    assert result.returncode == 1
    assert "WEB_CONCURRENCY: Input should be a valid integer" in result.stderr
    assert "Traceback" not in result.stderr
