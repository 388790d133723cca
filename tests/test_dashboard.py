"""deploy/prometheus/dashboard.json queries only metrics this service exports: a renamed
or removed metric fails here, not as an empty panel found during an incident."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import REGISTRY, Metric

import app.core.metrics  # noqa: F401  # registers the api's metrics on REGISTRY
from app.core.jobs.metrics import REGISTRY as JOBS_REGISTRY
from gunicorn_conf import _worker_restarts

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "prometheus" / "dashboard.json"
# In PromQL, what is not a metric name: label lists (`by (route)`), selectors and ranges;
# then a name not followed by "(" (a function or an aggregation) is a metric.
NOT_NAMES = re.compile(
    r"\b(?:by|without|on|ignoring)\s*\([^)]*\)|\{[^}]*\}|\[[^\]]*\]|\b(?:or|and|unless)\b"
)
# Prometheus's own series: `up` per scrape target (a worker's absence is only seen there).
PROMETHEUS_OWN = {"up"}
METRIC = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def series(families: Iterable[Metric]) -> set[str]:
    """The series names each metric family is scraped as (a counter `x` as `x_total`)."""
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def exported() -> set[str]:
    return (
        series(REGISTRY.collect())
        | series(JOBS_REGISTRY.collect())
        | series(_worker_restarts().collect())  # the Gunicorn master's own
    )


def queried() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert expressions, "the dashboard has no queries"
    return {name for expr in expressions for name in METRIC.findall(NOT_NAMES.sub(" ", expr))}


def test_the_dashboard_queries_only_exported_metrics() -> None:
    assert not queried() - exported() - PROMETHEUS_OWN


def test_the_check_reads_every_metric_and_nothing_else() -> None:
    assert queried() == {
        "http_request_duration_seconds_count",
        "http_request_duration_seconds_bucket",
        "http_requests_in_flight",
        "db_pool_checked_out_connections",
        "db_pool_overflow_connections",
        "cache_hits_total",
        "cache_misses_total",
        "redis_breaker_state",
        "redis_breaker_openings_total",
        "gunicorn_worker_restarts_total",
        "jobs_oldest_waiting_seconds",
        "job_duration_seconds_count",
        "up",
        "jobs_failed",
    }
    assert "http_requests_in_flight" in exported()
    assert "http_requests_in_flight_total" not in exported()
