"""Liveness and readiness, in the health+json format (draft-inadarei-api-health-check)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from functools import partial
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse

from app.health.checks import CheckResult, overall_status, ping_postgres, ping_redis, run_check

HEALTH_JSON = "application/health+json"
NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/health", tags=["health"])


def _check_entry(result: CheckResult, checked_at: str) -> list[dict[str, Any]]:
    entry: dict[str, Any] = {
        "componentType": "datastore",
        "observedValue": result.latency_ms,
        "observedUnit": "ms",
        "status": "pass" if result.ok else "fail",
        "time": checked_at,
    }
    if result.error:
        entry["output"] = result.error
    return [entry]


@router.get("", summary="Liveness: the process is up (touches no dependency)")
async def liveness() -> JSONResponse:
    return JSONResponse({"status": "pass"}, media_type=HEALTH_JSON, headers=NO_STORE)


@router.get(
    "/ready",
    summary="Readiness: Postgres and Redis answer",
    responses={503: {"description": "Postgres is unreachable: take this instance out of rotation"}},
)
async def readiness(request: Request) -> JSONResponse:
    timeout = request.state.settings.health_check_timeout
    postgres, redis = await asyncio.gather(
        run_check("postgres", partial(ping_postgres, request.state.engine), timeout),
        run_check("redis", partial(ping_redis, request.state.redis), timeout),
    )
    checked_at = datetime.now(UTC).isoformat()
    overall = overall_status(postgres, redis)
    body = {
        "status": overall,
        "checks": {
            f"{result.name}:responseTime": _check_entry(result, checked_at)
            for result in (postgres, redis)
        },
    }
    code = status.HTTP_503_SERVICE_UNAVAILABLE if overall == "fail" else status.HTTP_200_OK
    return JSONResponse(body, status_code=code, media_type=HEALTH_JSON, headers=NO_STORE)
