"""Liveness and readiness, with each dependency up, down, or hanging."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from httpx import AsyncClient
from redis.asyncio import Redis

from app.core.config import Settings
from app.health import checks as health_checks
from tests.conftest import UNREACHABLE_POSTGRES, UNREACHABLE_REDIS, AppClientMaker, with_overrides


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A local port that accepts connections and never answers: a hung dependency."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


# A Redis paused (CLIENT PAUSE) for PAUSE_MS, against a timeout well under it: the call
# made during the pause times out, and the calls made after it have the same timeout,
# long enough for a busy machine.
PAUSE_MS = 2000
PAUSED_TIMEOUT_S = 0.5


def checks(body: dict[str, object]) -> dict[str, dict[str, object]]:
    raw = body["checks"]
    assert isinstance(raw, dict)
    return {name.split(":")[0]: entries[0] for name, entries in raw.items()}


async def test_liveness_passes_without_touching_dependencies(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await make_client(
        with_overrides(settings, database_url=UNREACHABLE_POSTGRES, redis_url=UNREACHABLE_REDIS)
    )
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "pass"}
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "no-store"


async def test_ready_passes_with_both_dependencies_up(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await make_client(settings)  # the run's Redis timeouts: a busy machine's
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "pass"
    assert set(checks(body)) == {"postgres", "redis"}
    for check in checks(body).values():
        assert check["status"] == "pass"
        assert check["observedUnit"] == "ms"
        assert isinstance(check["observedValue"], float)
    assert response.headers["content-type"] == "application/health+json"
    assert response.headers["cache-control"] == "no-store"


async def test_ready_fails_with_503_when_postgres_is_down(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await make_client(with_overrides(settings, database_url=UNREACHABLE_POSTGRES))
    response = await client.get("/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "fail"
    assert checks(body)["postgres"]["status"] == "fail"
    assert checks(body)["postgres"]["output"]  # says why, by kind of error
    assert checks(body)["redis"]["status"] == "pass"
    assert "nothing" not in response.text  # no credentials from the URL


async def test_ready_warns_with_200_when_redis_is_down(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await make_client(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "warn"
    assert checks(body)["redis"]["status"] == "fail"
    assert checks(body)["postgres"]["status"] == "pass"


@pytest.mark.examples
async def test_ready_warns_while_the_breaker_is_open_though_redis_answers(
    make_client: AppClientMaker, settings: Settings, redis: Redis
) -> None:
    """Redis alive but silent long enough to open the breaker (CLIENT PAUSE), then
    back: the probe passes, yet requests still skip Redis until the cool-down ends."""
    client = await make_client(
        with_overrides(
            settings,
            redis_socket_timeout=PAUSED_TIMEOUT_S,
            redis_breaker_failures=1,
            redis_breaker_cooldown=30,
        )
    )
    item = (await client.post("/api/v1/items", json={"name": "paused"})).json()
    await redis.client_pause(PAUSE_MS, all=True)
    # Its cache lookup times out, the breaker opens, Postgres answers.
    assert (await client.get(f"/api/v1/items/{item['id']}")).status_code == 200
    await asyncio.sleep(PAUSE_MS / 1000 + 0.1)  # the pause is over
    response = await client.get("/health/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "warn"
    assert checks(body)["redis"]["status"] == "pass"
    assert checks(body)["redis"]["breaker"] == "open"


@pytest.mark.examples
async def test_ready_closes_the_breaker_once_its_cool_down_is_over_and_redis_answers(
    make_client: AppClientMaker, settings: Settings, redis: Redis
) -> None:
    """With no request using Redis after the outage, readiness's own PING is the probe:
    the worker does not stay half-open, and `warn`, until traffic comes."""
    client = await make_client(
        with_overrides(
            settings,
            redis_socket_timeout=PAUSED_TIMEOUT_S,
            redis_breaker_failures=1,
            redis_breaker_cooldown=0.5,  # over before the pause is
        )
    )
    item = (await client.post("/api/v1/items", json={"name": "idle"})).json()
    await redis.client_pause(PAUSE_MS, all=True)
    assert (await client.get(f"/api/v1/items/{item['id']}")).status_code == 200  # opens it
    await asyncio.sleep(PAUSE_MS / 1000 + 0.1)  # the pause and the cool-down are over
    body = (await client.get("/health/ready")).json()
    assert body["status"] == "pass"
    assert checks(body)["redis"]["breaker"] == "closed"


async def test_ready_times_out_a_hung_dependency_and_checks_concurrently(
    make_client: AppClientMaker, settings: Settings, silent_port: int
) -> None:
    timeout = 0.3
    client = await make_client(
        with_overrides(
            settings,
            database_url=f"postgresql://x:y@127.0.0.1:{silent_port}/db",
            redis_url=f"redis://127.0.0.1:{silent_port}/0",
            redis_socket_timeout=5,
            redis_connect_timeout=5,
            health_check_timeout=timeout,
        )
    )
    started = asyncio.get_running_loop().time()
    response = await client.get("/health/ready")
    elapsed = asyncio.get_running_loop().time() - started
    assert response.status_code == 503
    found = checks(response.json())
    assert found["postgres"]["output"] == f"timed out after {timeout} s"
    assert found["redis"]["output"] == f"timed out after {timeout} s"
    # Both hung for the full timeout, yet the probe took one timeout, not two.
    assert elapsed < 2 * timeout


async def test_ready_fails_while_draining(
    client: AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A deploy marks the instance as draining first, so the proxy stops routing to it."""
    flag = tmp_path / "draining"
    monkeypatch.setattr(health_checks, "DRAIN_FLAG", flag)
    assert (await client.get("/health/ready")).status_code == 200
    flag.touch()
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert response.json()["status"] == "fail"
    assert (await client.get("/health")).status_code == 200  # alive, only not ready
