"""deploy/prometheus/: the dashboard and the alert rules parse as PromQL and select only
what this service exports: its metrics, the scrape jobs prometheus.yml names, the status
classes the api records. A renamed metric or a mistyped label fails here, not as an
empty panel or an alert that never fires (or always does), found during an incident."""

from __future__ import annotations

import ast
import json
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, Metric

import app.core.metrics  # noqa: F401  # registers the api's metrics on REGISTRY
from app.core.jobs.metrics import REGISTRY as JOBS_REGISTRY
from gunicorn_conf import MetricsDirUsage, _worker_restarts

PROMETHEUS = Path(__file__).resolve().parent.parent / "deploy" / "prometheus"
BACKUP_EXPORTER = PROMETHEUS.parent / "backup" / "pgbackup.py"
# Prometheus's own series: `up` per scrape target (a worker's absence is only seen there).
PROMETHEUS_OWN = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
# The api's `status` label: the class of the answer (app/core/metrics.py).
STATUS_CLASSES = {f"{digit}xx" for digit in range(1, 6)}
# Grafana's variables, as the dashboard's queries use them, and what Prometheus would see.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".+"}


def series(families: Iterable[Metric]) -> set[str]:
    """The series names each metric family is scraped as (a counter `x` as `x_total`)."""
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def backup_exporter_series() -> set[str]:
    """The gauges deploy/backup/pgbackup.py exports: the keys of its HELP table (read,
    not imported: it is the backup image's program)."""
    module = ast.parse(BACKUP_EXPORTER.read_text())
    table = next(
        node.value
        for node in module.body
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "HELP"
    )
    return set(ast.literal_eval(table))


def exported() -> set[str]:
    return (
        series(REGISTRY.collect())
        | series(JOBS_REGISTRY.collect())
        | series(_worker_restarts().collect())  # the Gunicorn master's own
        | series(MetricsDirUsage(Path(tempfile.gettempdir())).collect())
        | backup_exporter_series()
        | PROMETHEUS_OWN
    )


def scrape_jobs() -> set[str]:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    return {job["job_name"] for job in config["scrape_configs"]}


def selectors(expression: str) -> list[tuple[str, dict[str, str]]]:
    """Each metric an expression selects, with the labels it must equal; a ValueError
    if it is not PromQL."""
    found: list[tuple[str, dict[str, str]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            equal = promql_parser.MatchOp.Equal
            labels = {m.name: m.value for m in node.matchers.matchers if m.op == equal}
            found.append((node.name, labels))

    promql_parser.walk(promql_parser.parse(expression), visit)
    return found


def problems(expression: str) -> list[str]:
    """What in `expression` this service never exports: [] when all of it may match."""
    found = []
    for name, labels in selectors(expression):
        if name not in exported():
            found.append(f"{name}: not exported")
        job, status = labels.get("job"), labels.get("status")
        if job is not None and job not in scrape_jobs():
            found.append(f"{name}: job={job!r} is no scrape job of prometheus.yml")
        if status is not None and status not in STATUS_CLASSES:
            found.append(f"{name}: status={status!r} is not a status class")
    return found


def dashboard_queries() -> list[str]:
    dashboard = json.loads((PROMETHEUS / "dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert queries, "the dashboard has no queries"
    pattern = re.compile("|".join(re.escape(variable) for variable in GRAFANA_VARIABLES))
    return [pattern.sub(lambda m: GRAFANA_VARIABLES[m[0]], query) for query in queries]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_dashboard_queries_only_what_is_exported() -> None:
    queries = dashboard_queries()
    assert [(query, problems(query)) for query in queries] == [(query, []) for query in queries]
    # The check reads every query: each metric the dashboard plots is found.
    assert {name for query in queries for name, _ in selectors(query)} == {
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
    assert "http_requests_in_flight" in exported()  # a gauge: no _total
    assert "http_requests_in_flight_total" not in exported()


def test_every_alert_is_complete_and_queries_only_what_is_exported() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "two alerts share a name"
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert problems(rule["expr"]) == [], rule["alert"]
    # The ones the docs tell you to have: each area's alarm.
    assert {"ApiServerErrors", "JobsWaiting", "NoJobWorker", "BackupOverdue"} <= set(names)


@pytest.mark.parametrize(
    ("expression", "found"),
    [
        ('sum(rate(http_request_duration_seconds_count{status="5xx"}[5m]))', []),
        ("max(jobs_failures)", ["jobs_failures: not exported"]),
        (
            'absent(up{job="workers"} == 1)',
            ["up: job='workers' is no scrape job of prometheus.yml"],
        ),
        (
            'http_request_duration_seconds_count{job="api",status="500"}',
            ["http_request_duration_seconds_count: status='500' is not a status class"],
        ),
    ],
)
def test_the_check_finds_what_would_never_match(expression: str, found: list[str]) -> None:
    assert problems(expression) == found


def test_the_check_refuses_what_prometheus_would_not_load() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        problems("max by (job_name (jobs_failed)")
