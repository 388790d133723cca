"""Metrics in one process: labels by route template (never the raw path), bounded
label values, the in-flight gauge, the pool, cache and breaker instruments, and the
development /metrics route. The values sum across workers under Gunicorn:
tests/test_metrics_gunicorn.py."""

from __future__ import annotations

import uuid

import pytest
from fastapi import APIRouter, FastAPI
from httpx import AsyncClient
from prometheus_client import REGISTRY
from pydantic import BaseModel

from app.core.application import build_app
from app.core.breaker import CircuitBreaker
from app.core.cache import ModelCache
from app.core.config import Settings
from app.core.db import create_engine
from app.core.metrics import UNMATCHED, publish_worker_gauges
from app.core.redis import OptionalRedis, create_redis_client
from app.core.state import EngineDep, RedisDep
from tests.conftest import UNREACHABLE_REDIS, AppClientMaker, until, with_overrides

router = APIRouter(prefix="/metrics-probe")


@router.get("/things/{thing_id}")
async def read_thing(thing_id: str) -> dict[str, str]:
    return {"id": thing_id}


@router.get("/in-flight")
async def in_flight(engine: EngineDep, redis: RedisDep) -> float:
    publish_worker_gauges(engine, redis.breaker)
    return sample("http_requests_in_flight")  # the gauge as this request sees it


@router.get("/fails")
async def fails() -> None:
    raise RuntimeError("unhandled")


def build_probe_app(settings: Settings) -> FastAPI:
    return build_app(settings, routers=[router], title="metrics tests", version="0")


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def requests(route: str, method: str = "GET", status: str = "2xx") -> float:
    """Requests counted: the latency histogram's _count."""
    return sample("http_request_duration_seconds_count", route=route, method=method, status=status)


def recorded_routes() -> set[str]:
    """Every route label the latency histogram holds."""
    return {
        s.labels["route"]
        for metric in REGISTRY.collect()
        if metric.name == "http_request_duration_seconds"
        for s in metric.samples
        if "route" in s.labels
    }


@pytest.fixture
async def probe_client(make_client: AppClientMaker, settings: Settings) -> AsyncClient:
    return await make_client(settings, build_probe_app(settings))


async def test_requests_are_labelled_by_route_template(probe_client: AsyncClient) -> None:
    template = "/metrics-probe/things/{thing_id}"
    before = requests(template)
    labels = {"route": template, "method": "GET", "status": "2xx"}
    seconds_before = sample("http_request_duration_seconds_sum", **labels)
    for thing in ("a", "b", "c"):
        assert (await probe_client.get(f"/metrics-probe/things/{thing}")).status_code == 200
    assert requests(template) == before + 3
    assert sample("http_request_duration_seconds_sum", **labels) > seconds_before
    assert requests("/metrics-probe/things/a") == 0  # never the raw path


async def test_unmatched_paths_share_one_label(probe_client: AsyncClient) -> None:
    before = requests(UNMATCHED, status="4xx")
    for path in ("/nowhere", f"/scan/{uuid.uuid4()}", "/metrics-probe/things"):
        assert (await probe_client.get(path)).status_code == 404
    assert requests(UNMATCHED, status="4xx") == before + 3


async def test_unknown_methods_share_one_label(probe_client: AsyncClient) -> None:
    before = requests(UNMATCHED, method="OTHER", status="4xx")
    await probe_client.request("BREW", "/coffee")
    assert requests(UNMATCHED, method="OTHER", status="4xx") == before + 1


async def test_an_unhandled_error_counts_as_5xx(probe_client: AsyncClient) -> None:
    before = requests("/metrics-probe/fails", status="5xx")
    assert (await probe_client.get("/metrics-probe/fails")).status_code == 500
    assert requests("/metrics-probe/fails", status="5xx") == before + 1


async def test_a_route_is_counted_under_the_prefix_its_router_was_included_with(
    make_client: AppClientMaker, settings: Settings
) -> None:
    app = build_app(settings, routers=[], api_routers=[router], title="metrics", version="0")
    client = await make_client(settings, app)
    template = "/api/v1/metrics-probe/things/{thing_id}"
    before = requests(template)
    assert (await client.get("/api/v1/metrics-probe/things/a")).status_code == 200
    assert requests(template) == before + 1, (
        "the route was not counted under its full template: FastAPI no longer keeps it in "
        'scope["fastapi"]["effective_route_context"]; update route_template() in '
        f"app/core/metrics.py. Labels recorded: {sorted(recorded_routes())}"
    )


async def test_in_flight_counts_the_request_being_served(probe_client: AsyncClient) -> None:
    assert (await probe_client.get("/metrics-probe/in-flight")).json() == 1


async def test_metrics_off_counts_nothing(make_client: AppClientMaker, settings: Settings) -> None:
    off = with_overrides(settings, metrics_enabled=False)
    client = await make_client(off, build_probe_app(off))
    before = requests("/metrics-probe/things/{thing_id}")
    assert (await client.get("/metrics-probe/things/a")).status_code == 200  # served, not counted
    assert requests("/metrics-probe/things/{thing_id}") == before


async def test_metrics_route_only_in_development(
    make_client: AppClientMaker, settings: Settings
) -> None:
    test_client = await make_client(settings, build_probe_app(settings))
    assert (await test_client.get("/metrics")).status_code == 404
    development = with_overrides(settings, environment="development")
    client = await make_client(development, build_probe_app(development))
    await client.get("/metrics-probe/things/a")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    series = 'http_request_duration_seconds_count{method="GET",route="/metrics-probe/things/'
    assert series in response.text
    assert "/metrics" not in (await client.get("/openapi.json")).json()["paths"]


async def test_pool_gauges(settings: Settings) -> None:
    engine = create_engine(with_overrides(settings, db_pool_size=1, db_max_overflow=1))
    redis = OptionalRedis.from_settings(settings)

    def gauges() -> tuple[float, float]:
        publish_worker_gauges(engine, redis.breaker)
        return sample("db_pool_checked_out_connections"), sample("db_pool_overflow_connections")

    try:
        async with engine.connect():
            assert gauges() == (1, 0)
            async with engine.connect():
                assert gauges() == (2, 1)
            assert gauges() == (1, 1)  # two open, one in use: the pool holds the other
        assert gauges() == (0, 0)  # the pool (size 1) is full: the second one is closed
    finally:
        await engine.dispose()
        await redis.aclose()


class Thing(BaseModel):
    id: uuid.UUID


async def test_cache_counts_hits_and_misses(settings: Settings) -> None:
    redis = OptionalRedis.from_settings(settings)
    resource = f"things-{uuid.uuid4().hex[:6]}"
    cache = ModelCache(redis, resource=resource, model=Thing, ttl_seconds=60)
    thing = Thing(id=uuid.uuid4())

    async def load() -> Thing:
        return thing

    try:
        for _ in range(3):
            await cache.get_or_load(thing.id, load)
    finally:
        await cache.invalidate(thing.id)
        await redis.aclose()
    assert sample("cache_misses_total", resource=resource) == 1
    assert sample("cache_hits_total", resource=resource) == 2


async def test_breaker_state_and_openings(settings: Settings) -> None:
    engine = create_engine(settings)
    now = [0.0]
    breaker = CircuitBreaker(failures=1, cooldown=10, clock=lambda: now[0])
    unreachable = with_overrides(settings, redis_url=UNREACHABLE_REDIS)
    down = OptionalRedis(create_redis_client(unreachable), breaker)
    up = OptionalRedis(create_redis_client(settings), breaker)

    def state() -> float:
        publish_worker_gauges(engine, up.breaker)
        return sample("redis_breaker_state")

    openings = sample("redis_breaker_openings_total")
    try:
        assert state() == 0
        assert await down.run(lambda redis: redis.ping()) is None
        assert (state(), sample("redis_breaker_openings_total")) == (2, openings + 1)
        now[0] = 10  # the cool-down is over: the next call starts the probe, a PING
        assert state() == 1
        assert await up.run(lambda redis: redis.ping()) is None
        await until(lambda: state() == 0)
        assert await up.run(lambda redis: redis.ping()) is True
    finally:
        await down.aclose()
        await up.aclose()
        await engine.dispose()
