"""Liveness and readiness, in the health+json format (draft-inadarei-api-health-check)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse, Response

from app.core.breaker import BreakerState
from app.core.state import EngineDep, RedisDep, SettingsDep
from app.health.checks import (
    CheckResult,
    draining,
    overall_status,
    ping_postgres,
    ping_redis,
    run_check,
)

NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/health", tags=["health"])


class HealthResponse(JSONResponse):
    media_type = "application/health+json"


# The liveness answer never changes: encoded once, not on every probe.
_PASS = b'{"status":"pass"}'


def _check_entry(result: CheckResult, checked_at: str, **extra: Any) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "componentType": "datastore",
        "observedValue": result.latency_ms,
        "observedUnit": "ms",
        "status": "pass" if result.ok else "fail",
        "time": checked_at,
        **extra,
    }
    if result.error:
        entry["output"] = result.error
    return [entry]


@router.get("", response_class=HealthResponse)
async def liveness() -> Response:
    """Liveness: the process is up and serving. Touches no dependency, so a database
    outage never gets healthy containers restarted."""
    return Response(_PASS, media_type=HealthResponse.media_type, headers=NO_STORE)


@router.get(
    "/ready",
    response_class=HealthResponse,
    responses={
        503: {
            "description": "Postgres is unreachable: take this instance out of rotation.",
            "content": {"application/health+json": {}},
        }
    },
)
async def readiness(settings: SettingsDep, engine: EngineDep, redis: RedisDep) -> HealthResponse:
    """Readiness: Postgres and Redis probed concurrently, each under a timeout. Redis
    down (or its breaker open) is `warn` with 200, since the app degrades without it;
    Postgres down, or this instance draining for a deploy, is `fail` with 503."""
    if draining():
        return HealthResponse(
            {"status": "fail", "output": "draining: this instance is about to stop"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers=NO_STORE,
        )
    timeout = settings.health_check_timeout
    postgres, redis_check = await asyncio.gather(
        run_check("postgres", partial(ping_postgres, engine), timeout),
        run_check("redis", partial(ping_redis, redis.client), timeout),
    )
    if redis_check.ok and redis.state is BreakerState.HALF_OPEN:
        # The cool-down is over and Redis answered: the probe the breaker waits for. An
        # idle worker would otherwise stay half-open (`warn`, and its gauge at 1) until a
        # request happened to use Redis.
        redis.breaker.record_success()
    checked_at = datetime.now(UTC).isoformat()
    overall = overall_status(postgres, redis_check)
    if overall == "pass" and redis.state != "closed":
        overall = "warn"  # Redis answers the probe, but requests are still skipping it
    body: dict[str, Any] = {
        "status": overall,
        "checks": {
            "postgres:responseTime": _check_entry(postgres, checked_at),
            "redis:responseTime": _check_entry(redis_check, checked_at, breaker=redis.state.value),
        },
    }
    code = status.HTTP_503_SERVICE_UNAVAILABLE if overall == "fail" else status.HTTP_200_OK
    return HealthResponse(body, status_code=code, headers=NO_STORE)
