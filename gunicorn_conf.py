"""Gunicorn's configuration: every value from the environment, with a sensible default.

    gunicorn -c gunicorn_conf.py app.main:app   # how the image serves the app
    python gunicorn_conf.py                     # print the effective configuration

The README's "Gunicorn" table lists each variable. Workers are Uvicorn workers from
the maintained `uvicorn-worker` package; each builds its own database pool and Redis
client in the app's lifespan, after the fork, so no connection is ever shared.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.core.config import LoggingSettings, SettingsError, describe_validation_error, load_settings
from app.core.logging import build_logging_config

CGROUP_ROOT = Path("/sys/fs/cgroup")


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
    # a worker start (imports and app, ~0.5 CPU s) while the others carry its load, and
    # closes its keep-alive connections. 10,000 meant a recycle every few seconds under
    # load; 5,000,000 is ~10 minutes at full load, about a day at 50 requests/s
    # (docs/benchmarks.md). Jitter spreads the workers' restarts apart.
    gunicorn_max_requests: int = Field(default=5_000_000, ge=0)
    gunicorn_max_requests_jitter: int = Field(default=500_000, ge=0)
    # Who may set X-Forwarded-For/-Proto: the reverse proxy's address only.
    forwarded_allow_ips: str = "127.0.0.1"


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


def on_starting(server: Any) -> None:
    """Validate the app's settings in the master, before any worker starts: a bad
    setting stops Gunicorn with a message, instead of workers failing in a loop."""
    try:
        load_settings()
    except SettingsError as exc:
        sys.exit(str(exc))


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
}

if __name__ == "__main__":
    print(json.dumps(EFFECTIVE, indent=2))
