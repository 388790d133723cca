"""Prometheus metrics, correct across Gunicorn workers and cheap per request.

Under Gunicorn, prometheus_client runs in multiprocess mode: gunicorn_conf.py points
PROMETHEUS_MULTIPROC_DIR at a tmpfs before any worker starts, each worker writes its
values to memory-mapped files there, and the master serves the sum of all of them on
METRICS_PORT (never through the proxy). Under a plain `uvicorn` in development the app
serves GET /metrics itself. docs/metrics.md lists every metric.

Cheap by design: per request, the middleware writes two memory-mapped floats (the
histogram's bucket and sum) and builds no label strings after a route's first request.
The per-worker gauges (in flight, the pool, the Redis breaker) are sampled once a second
by a task in each worker instead of being written on every change: a scrape sees them at
most a second old, and a request pays nothing for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator
from time import perf_counter

from fastapi import FastAPI, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.breaker import BreakerState, CircuitBreaker
from app.core.config import Settings

# prometheus_client's multiprocess switch, read by the library itself.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

# The label of a request no route matched (a 404 or a scan): one series, not one per path.
UNMATCHED = "<unmatched>"
# Any other method (clients may send anything) is counted as "OTHER": bounded labels.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LABELS = ("route", "method", "status")
# An API's latencies: 5 ms to 5 s. Fewer buckets, fewer series to scrape.
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# How often each worker publishes its gauges: finer than any scrape interval.
GAUGE_INTERVAL_SECONDS = 1.0
_BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

# Also the request counter: its _count series counts requests (a separate counter would
# cost another write per request for the same numbers).
DURATION = Histogram(
    "http_request_duration_seconds",
    "Requests by route template, method and status class, and the time each took.",
    _LABELS,
    buckets=_BUCKETS,
)
# live*: a worker's value disappears with the worker (gunicorn_conf.py's child_exit).
IN_FLIGHT = Gauge("http_requests_in_flight", "Requests being served.", multiprocess_mode="livesum")
DB_CHECKED_OUT = Gauge(
    "db_pool_checked_out_connections",
    "Database connections in use, all workers.",
    multiprocess_mode="livesum",
)
DB_OVERFLOW = Gauge(
    "db_pool_overflow_connections",
    "Connections open beyond each worker's DB_POOL_SIZE (at most DB_MAX_OVERFLOW each).",
    multiprocess_mode="livesum",
)
CACHE_HITS = Counter(
    "cache_hits",
    "ModelCache reads served from the cache (a worker's copy or Redis).",
    ("resource",),
)
CACHE_MISSES = Counter("cache_misses", "ModelCache reads that went to the database.", ("resource",))
REDIS_BREAKER_STATE = Gauge(
    "redis_breaker_state",
    "This worker's Redis breaker: 0 closed, 1 half-open (probing), 2 open (Redis skipped).",
    multiprocess_mode="liveall",
)
# liveall: one series per worker (its pid), gone with the worker.
NEAR_CACHE_LISTENER_LIVE = Gauge(
    "app_near_cache_listener_live",
    "1 while this worker's near-cache listener is live (its copies are served), else 0;"
    " 0 everywhere when the near cache is off (CACHE_LOCAL_TTL_SECONDS=0).",
    multiprocess_mode="liveall",
)
REDIS_BREAKER_OPENINGS = Counter("redis_breaker_openings", "Times a Redis breaker opened.")


class _InFlight:
    """This worker's requests being served: counted in memory, published each second."""

    now = 0


class MetricsMiddleware:
    """Counts and times each HTTP request by the matched route's template
    (`/api/v1/items/{item_id}`, never the raw path), method and status class."""

    __slots__ = ("_children", "app")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # (template, method, status) -> its histogram child: built once, then looked up.
        self._children: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        status = 500  # what the client gets if the app raises before responding

        async def send_and_note_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        _InFlight.now += 1
        started = perf_counter()
        try:
            await self.app(scope, receive, send_and_note_status)
        finally:
            elapsed = perf_counter() - started
            _InFlight.now -= 1
            template = route_template(scope)
            # Folded before the lookup: any method string a client sends is one key, so
            # the children cache stays as bounded as the series.
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            key = (template, method, status)
            histogram = self._children.get(key)
            if histogram is None:
                histogram = self._children[key] = _histogram_for(*key)
            histogram.observe(elapsed)


def route_template(scope: Scope) -> str:
    """The matched route's template as clients see it, with the prefixes its router was
    included under (`/api/v1/items/{item_id}`), or UNMATCHED. The router writes it into
    the scope, which this middleware shares. Since FastAPI 0.137, `scope["route"]` of an
    included route holds the route's own path only; the full one is the effective route
    context FastAPI keeps in `scope["fastapi"]` (what Sentry's and others' integrations
    read). tests/core/test_metrics.py fails if an upgrade moves it."""
    fastapi_scope = scope.get("fastapi")
    context = (
        fastapi_scope.get("effective_route_context") if isinstance(fastapi_scope, dict) else None
    )
    for source in (getattr(context, "starlette_route", None), context, scope.get("route")):
        template = getattr(source, "path_format", None)
        if isinstance(template, str) and template:
            return template
    return UNMATCHED


def _histogram_for(template: str, method: str, status: int) -> Histogram:
    return DURATION.labels(template, method, f"{status // 100}xx")


@functools.cache
def cache_counters(resource: str) -> tuple[Counter, Counter]:
    """The hit and miss counters of one cached resource."""
    return CACHE_HITS.labels(resource), CACHE_MISSES.labels(resource)


def publish_worker_gauges(engine: AsyncEngine, breaker: CircuitBreaker) -> None:
    """Write this worker's gauges: requests in flight, its pool, its Redis breaker."""
    IN_FLIGHT.set(_InFlight.now)
    pool = engine.sync_engine.pool
    if isinstance(pool, QueuePool):  # the default pool (NullPool keeps no connections)
        DB_CHECKED_OUT.set(pool.checkedout())
        # overflow() starts at -DB_POOL_SIZE and counts every connection the pool opened.
        DB_OVERFLOW.set(max(0, pool.overflow()))
    REDIS_BREAKER_STATE.set(_BREAKER_VALUES[breaker.state])


@contextlib.asynccontextmanager
async def worker_gauges(engine: AsyncEngine, breaker: CircuitBreaker) -> AsyncIterator[None]:
    """Publish this worker's gauges every GAUGE_INTERVAL_SECONDS while the app runs."""

    async def publish_forever() -> None:
        while True:
            publish_worker_gauges(engine, breaker)
            await asyncio.sleep(GAUGE_INTERVAL_SECONDS)

    task = asyncio.create_task(publish_forever())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def breaker_opened() -> None:
    """Count an opening at once: a flapping breaker can open and close within a second."""
    REDIS_BREAKER_OPENINGS.inc()


def multiprocess_registry() -> CollectorRegistry:
    """A registry that sums every process's files in PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    return registry


def install_metrics(app: FastAPI, settings: Settings) -> None:
    """Count every request; in development also serve GET /metrics on the app's port
    (in production the Gunicorn master serves them on METRICS_PORT, see gunicorn_conf.py)."""
    app.add_middleware(MetricsMiddleware)
    if settings.environment != "development":
        return
    registry = multiprocess_registry() if MULTIPROCESS else REGISTRY

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
