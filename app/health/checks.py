"""Readiness checks: each dependency probed concurrently, each with its own timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

Status = Literal["pass", "warn", "fail"]

# Present while this instance drains before a deploy stops it (scripts/deploy.sh
# creates it in the container's /tmp): readiness fails, the proxy stops sending new
# requests, and the ones in flight finish before Gunicorn is told to stop.
DRAIN_FLAG = Path("/tmp/draining")  # noqa: S108  # a flag in the container's own tmpfs


def draining() -> bool:
    return DRAIN_FLAG.exists()


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    latency_ms: float
    error: str | None = None


async def ping_postgres(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def ping_redis(redis: Redis) -> None:
    # The client itself, not OptionalRedis: readiness reports Redis as it is, even
    # while the breaker has the app skipping it.
    await redis.ping()


async def run_check(name: str, probe: Callable[[], Awaitable[None]], seconds: float) -> CheckResult:
    """Run one probe; a timeout or any error is a failed check, reported by kind only."""
    started = time.perf_counter()
    error: str | None = None
    try:
        async with asyncio.timeout(seconds):
            await probe()
    except TimeoutError:
        error = f"timed out after {seconds} s"
    except Exception as exc:  # any failure means "not ready", whatever its cause
        # The exception's type only: its text may carry hosts or credentials.
        error = type(exc).__name__
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    return CheckResult(name=name, ok=error is None, latency_ms=latency_ms, error=error)


def overall_status(postgres: CheckResult, redis: CheckResult) -> Status:
    """Postgres is required; Redis is a cache and a limiter, so without it we degrade."""
    if not postgres.ok:
        return "fail"
    if not redis.ok:
        return "warn"
    return "pass"
