"""deploy/prometheus/: the dashboard and the alert rules parse as PromQL and query only
metrics this service exports. A renamed or removed metric fails here, not as an empty
panel or an alert that can never fire, found during an incident."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, Metric

import app.core.metrics  # noqa: F401  # registers the api's metrics on REGISTRY
from app.core.jobs.metrics import REGISTRY as JOBS_REGISTRY
from gunicorn_conf import _worker_restarts

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "prometheus" / "dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
BACKUP_EXPORTER = DEPLOY / "backup" / "pgbackup.py"
# Prometheus's own series: `up` per scrape target (a worker's absence is only seen there).
PROMETHEUS_OWN = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
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
        | backup_exporter_series()
    )


def metric_names(expression: str) -> set[str]:
    """The metrics an expression selects; a ValueError if it is not PromQL."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert queries, "the dashboard has no queries"
    pattern = re.compile("|".join(re.escape(variable) for variable in GRAFANA_VARIABLES))
    return [pattern.sub(lambda m: GRAFANA_VARIABLES[m[0]], query) for query in queries]


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_the_dashboard_queries_only_exported_metrics() -> None:
    queried = {name for query in dashboard_queries() for name in metric_names(query)}
    assert not queried - exported() - PROMETHEUS_OWN
    # The check reads every query: a metric of each kind the dashboard plots is found.
    assert {"http_request_duration_seconds_bucket", "jobs_oldest_waiting_seconds", "up"} <= queried


def test_every_alert_is_complete_and_queries_only_exported_metrics() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "two alerts share a name"
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert not metric_names(rule["expr"]) - exported() - PROMETHEUS_OWN, rule["alert"]
    # The ones the docs tell you to have: each area's alarm.
    assert {"ApiServerErrors", "JobsWaiting", "NoJobWorker", "BackupOverdue"} <= set(names)


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        (
            'sum(rate(a_total{job="api"}[5m])) / sum(rate(b_count[5m])) > 0.01',
            {"a_total", "b_count"},
        ),
        ('absent(up{job="worker"} == 1) or max by (job_name) (c) > 0', {"up", "c"}),
    ],
)
def test_the_check_finds_every_metric_of_an_expression(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


def test_the_check_refuses_what_prometheus_would_not_load() -> None:
    with pytest.raises(ValueError, match="parenthesis"):
        metric_names("max by (job_name (jobs_failed)")
