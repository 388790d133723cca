"""Gunicorn's configuration: every value from the environment, with a sensible default.

    gunicorn -c gunicorn_conf.py app.main:app   # how the image serves the app
    python gunicorn_conf.py                     # print the effective configuration

The README's "Gunicorn" table lists each variable. Workers are Uvicorn workers from
the maintained `uvicorn-worker` package; each builds its own database pool and Redis
client in the app's lifespan, after the fork, so no connection is ever shared.

Metrics (docs/metrics.md): with METRICS_ENABLED, the master points the workers at an
emptied PROMETHEUS_MULTIPROC_DIR and serves the sum of their metrics on METRICS_PORT.
prometheus_client picks its multiprocess mode when it is first imported, so this file
imports it only in the hooks, after on_starting has set that directory.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.config import (
    LoggingSettings,
    Settings,
    SettingsError,
    describe_validation_error,
    load_settings,
)
from app.core.logging import build_logging_config

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client import Counter
    from prometheus_client.metrics_core import Metric

CGROUP_ROOT = Path("/sys/fs/cgroup")
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    host: str = "0.0.0.0"  # noqa: S104  # inside a container; only the proxy can reach it
    port: int = Field(default=8000, ge=1, le=65535)
    # 0: derived from the CPUs this container may use (see default_workers).
    web_concurrency: int = Field(default=0, ge=0)
    # A worker silent for this long is killed and replaced.
    gunicorn_timeout: int = Field(default=30, ge=1)
    # On SIGTERM, in-flight requests get this long to finish. Keep the compose
    # stop_grace_period longer, or Docker kills the container first.
    gunicorn_graceful_timeout: int = Field(default=20, ge=1)
    # Longer than the proxy's idle timeout for upstream connections (Caddyfile),
    # so the proxy, not the app, closes idle connections and never reuses a dead one.
    gunicorn_keepalive: int = Field(default=65, ge=1)
    # Recycle a worker now and then to bound a slow leak, but rarely: each recycle costs
    # a worker start (imports and the app) while the others carry its load, and closes
    # its keep-alive connections; a count in the tens of thousands would mean a recycle
    # every few seconds under load. Jitter spreads the workers' restarts apart.
    gunicorn_max_requests: int = Field(default=5_000_000, ge=0)
    gunicorn_max_requests_jitter: int = Field(default=500_000, ge=0)
    # Who may set X-Forwarded-For/-Proto: the reverse proxy's address only.
    forwarded_allow_ips: str = "127.0.0.1"
    # Where the master serves the workers' metrics (on HOST): not routed by the proxy.
    metrics_port: int = Field(default=9000, ge=1, le=65535)
    # The workers' metric files: memory-backed (a tmpfs), emptied at every start.
    prometheus_multiproc_dir: Path = Path("/dev/shm/prometheus")  # noqa: S108


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """The container's CPU quota in CPUs (cgroup v2, then v1), or None if unlimited."""
    cpu_max = root / "cpu.max"
    if cpu_max.is_file():
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if quota_file.is_file() and period_file.is_file():
        quota_us = int(quota_file.read_text())
        return None if quota_us <= 0 else quota_us / int(period_file.read_text())
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> float:
    """CPUs this process may really use: its CPU affinity, capped by the cgroup quota.
    os.cpu_count() reports the host's cores, which a limited container cannot use."""
    cpus: float = len(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit(root)
    return min(cpus, limit) if limit is not None else cpus


def default_workers(cpus: float) -> int:
    """One async worker per usable CPU, and at least two, so that a worker being
    recycled (max_requests) never leaves the container unable to answer."""
    return max(2, math.ceil(cpus))


def db_connections_max(settings: Settings, worker_count: int) -> int:
    """The most connections this instance can open to Postgres: per worker, its pool and,
    with local cache copies on, the near cache's listener (app/core/near_cache.py)."""
    return worker_count * (settings.db_pool_size + settings.db_max_overflow + _listener(settings))


def _listener(settings: Settings) -> int:
    return int(settings.cache_local_ttl_seconds > 0 and settings.cache_local_max_entries > 0)


def check_connection_budget(settings: Settings, worker_count: int) -> str | None:
    """A warning when the workers' pools together may exceed DB_CONNECTION_BUDGET."""
    most = db_connections_max(settings, worker_count)
    if settings.db_connection_budget == 0 or most <= settings.db_connection_budget:
        return None
    return (
        f"{worker_count} workers x (DB_POOL_SIZE {settings.db_pool_size} + DB_MAX_OVERFLOW "
        f"{settings.db_max_overflow} + cache listener {_listener(settings)}) = {most} database "
        "connections at peak, over "
        f"DB_CONNECTION_BUDGET ({settings.db_connection_budget}): under load Postgres may refuse "
        "connections. Lower WEB_CONCURRENCY, DB_POOL_SIZE or DB_MAX_OVERFLOW, or raise the budget."
    )


def prepare_metrics_dir(directory: Path) -> None:
    """Create the metrics directory and empty it: files left by a previous run would be
    summed with this one's. Only prometheus_client's own files (*.db) are removed."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def app_settings_or_exit() -> Settings:
    """The app's settings, or exit with a message naming each bad one."""
    try:
        return load_settings()
    except SettingsError as exc:
        sys.exit(str(exc))


def on_starting(server: Any) -> None:
    """In the master, before any worker starts: validate the app's settings (a bad
    setting stops Gunicorn with a message, instead of workers failing in a loop), check
    the database connection budget, and set up the metrics directory the workers inherit."""
    settings = app_settings_or_exit()
    # A warning, not a refusal: the budget is reached only when every worker's pool is
    # full at once, and refusing to start would turn that risk into an outage.
    warning = check_connection_budget(settings, workers)
    if warning is not None:
        server.log.warning("DATABASE CONNECTION BUDGET EXCEEDED: %s", warning)
    if settings.metrics_enabled:
        prepare_metrics_dir(_server.prometheus_multiproc_dir)
        os.environ[METRICS_DIR_VARIABLE] = str(_server.prometheus_multiproc_dir)
        _worker_restarts()  # exported from the start, at 0
    else:
        os.environ.pop(METRICS_DIR_VARIABLE, None)  # workers keep metrics in memory only


def when_ready(server: Any) -> None:
    """Serve the sum of every worker's metrics from the master, on its own port."""
    if METRICS_DIR_VARIABLE not in os.environ:
        return
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    registry.register(MetricsDirUsage(Path(os.environ[METRICS_DIR_VARIABLE])))
    start_http_server(_server.metrics_port, addr=_server.host, registry=registry)
    server.log.info("metrics on %s:%s", _server.host, _server.metrics_port)


def child_exit(server: Any, worker: Any) -> None:
    """A worker exited (crash, timeout, recycle): drop its live gauges (its counters stay
    in the sum) and count the restart; the master starts a replacement."""
    if METRICS_DIR_VARIABLE not in os.environ:
        return
    from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

    mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]  # untyped upstream
    _worker_restarts().inc()
    used = metrics_dir_used(Path(os.environ[METRICS_DIR_VARIABLE]))
    if used > METRICS_DIR_WARN_AT:
        server.log.warning(
            "the metric files' tmpfs is %.0f%% full (the workers that exited left theirs):"
            " restart this container (make deploy) before it is full, or every new worker"
            " dies at its first sample",
            used * 100,
        )


# Past this share full, each worker exit warns (and the ApiMetricsDirFilling alert fires).
METRICS_DIR_WARN_AT = 0.8


def metrics_dir_used(directory: Path) -> float:
    """How full the metric files' filesystem is, 0 to 1."""
    stats = os.statvfs(directory)
    return 1 - stats.f_bavail / stats.f_blocks if stats.f_blocks else 0.0


class MetricsDirUsage:
    """A collector for the master's registry: each worker that exits leaves its counter
    and histogram files (they stay in the sum) until the container restarts, so the
    tmpfs fills with every recycle and crash; once full, a new worker dies at its first
    sample (SIGBUS)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily  # noqa: PLC0415

        yield GaugeMetricFamily(
            "gunicorn_metrics_dir_used_ratio",
            "How full the metric files' tmpfs is: exited workers' files stay until a restart.",
            value=metrics_dir_used(self.directory),
        )


@functools.cache
def _worker_restarts() -> Counter:
    from prometheus_client import Counter  # noqa: PLC0415

    # registry=None: the master's scrape reads the files (MultiProcessCollector), not a registry.
    return Counter(
        "gunicorn_worker_restarts", "Workers that exited and were replaced.", registry=None
    )


try:
    _server = ServerSettings()
    _logging = LoggingSettings()
except ValidationError as exc:
    sys.exit(describe_validation_error(exc))

bind = f"{_server.host}:{_server.port}"
workers = _server.web_concurrency or default_workers(available_cpus())
worker_class = "uvicorn_worker.UvicornWorker"
timeout = _server.gunicorn_timeout
graceful_timeout = _server.gunicorn_graceful_timeout
keepalive = _server.gunicorn_keepalive
max_requests = _server.gunicorn_max_requests
max_requests_jitter = _server.gunicorn_max_requests_jitter
forwarded_allow_ips = _server.forwarded_allow_ips
# Worker heartbeats in memory: the root filesystem is read-only, and a disk-backed
# /tmp can stall heartbeats and get healthy workers killed.
worker_tmp_dir = "/dev/shm"  # noqa: S108
# Gunicorn's runtime control socket (gunicornc, Gunicorn >= 25.1) is not used here,
# and its default home directory does not exist on a read-only filesystem.
control_socket_disable = True
# One logging setup: Gunicorn's lines in the app's format, on stdout. Access lines
# come from the app's middleware (with the request id), not from Gunicorn.
logconfig_dict = build_logging_config(_logging.log_level, _logging.effective_log_format)
# Gunicorn sets its own logger's level from this after reading logconfig_dict (and the
# Uvicorn workers copy it): without it, LOG_LEVEL=WARNING still printed their info lines.
loglevel = _logging.log_level.lower()
accesslog = None
errorlog = "-"

EFFECTIVE = {
    "bind": bind,
    "workers": workers,
    "worker_class": worker_class,
    "timeout": timeout,
    "graceful_timeout": graceful_timeout,
    "keepalive": keepalive,
    "max_requests": max_requests,
    "max_requests_jitter": max_requests_jitter,
    "forwarded_allow_ips": forwarded_allow_ips,
    "worker_tmp_dir": worker_tmp_dir,
    "log_level": _logging.log_level,
    "log_format": _logging.effective_log_format,
    "available_cpus": available_cpus(),
    "metrics_port": _server.metrics_port,
    "prometheus_multiproc_dir": str(_server.prometheus_multiproc_dir),
}


if __name__ == "__main__":
    app_settings = app_settings_or_exit()  # validated here too, as the master would
    effective = EFFECTIVE | {
        "metrics_enabled": app_settings.metrics_enabled,
        "db_connections_max": db_connections_max(app_settings, workers),
        "db_connection_budget": app_settings.db_connection_budget,
    }
    print(json.dumps(effective, indent=2))
    if (warning := check_connection_budget(app_settings, workers)) is not None:
        print(f"warning: {warning}", file=sys.stderr)
