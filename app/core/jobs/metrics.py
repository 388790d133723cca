"""The worker's Prometheus metrics, served by each worker process on JOBS_METRICS_PORT.

A worker is one process (its jobs are asyncio tasks), so a registry of its own is right
as it is: each worker is a scrape target, as each api container is (docs/metrics.md).

- What this worker did: how long each job waited once due, how long it ran and how it
  ended. `job_duration_seconds_count` by outcome counts successes, retries and failures.
- What the queue holds, read from Postgres every few seconds by each worker. Every
  worker reports the same queue: aggregate these with max, not sum.

The alert is `jobs_oldest_waiting_seconds` (docs/jobs.md#watching-it). The label is
`job_name`: Prometheus's own `job` label names the scrape target.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

# Jobs wait from milliseconds (a worker was idle) to hours (a backlog, every worker down).
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 1800.0, 7200.0)
_DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0)

WAIT = Histogram(
    "job_wait_seconds",
    "From when a job was due (enqueued, or its retry's time) to when a worker started it.",
    ("job_name",),
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
DURATION = Histogram(
    "job_duration_seconds",
    "Runs by job and outcome (success; retry: failed, tried again later; failed: "
    "every attempt used), and how long each took.",
    ("job_name", "outcome"),
    buckets=_DURATION_BUCKETS,
    registry=REGISTRY,
)
RERUNS = Counter(
    "job_reruns",
    "Runs of a job an earlier run of which never finished (its worker was killed or lost).",
    ("job_name",),
    registry=REGISTRY,
)
QUEUED = Gauge(
    "jobs_queued",
    "Jobs waiting, due now or later (a retry waits out its backoff), all workers.",
    ("job_name",),
    registry=REGISTRY,
)
RUNNING = Gauge(
    "jobs_running", "Jobs taken by a worker, all workers.", ("job_name",), registry=REGISTRY
)
FAILED = Gauge(
    "jobs_failed",
    "Jobs kept as failed after their last attempt, until retried or deleted.",
    ("job_name",),
    registry=REGISTRY,
)
OLDEST = Gauge(
    "jobs_oldest_waiting_seconds",
    "How long the oldest job due and not yet started has waited (0: none waits).",
    ("job_name",),
    registry=REGISTRY,
)

# One statement, the queue table only (finished jobs are not in it): cheap at any size a
# healthy queue has. A retry waiting out its backoff is queued but not yet due.
QUEUE_SAMPLE = """
SELECT entrypoint,
       count(*) FILTER (WHERE status = 'queued') AS queued,
       count(*) FILTER (WHERE status = 'picked') AS running,
       count(*) FILTER (WHERE status = 'failed') AS failed,
       coalesce(extract(epoch FROM now() - min(execute_after)
                FILTER (WHERE status = 'queued' AND execute_after <= now())), 0)::float8 AS oldest
FROM pgqueuer
GROUP BY entrypoint
"""


OUTCOMES = ("success", "retry", "failed")


def declare(job_names: Iterable[str]) -> None:
    """Every job's series, at 0, from the worker's start. prometheus_client makes a labelled
    series at its first sample, so a job's first failure would appear at 1, and
    `increase()` (the JobRunFailed alert) sees no rise from a series' first sample: a
    periodic job that fails once a night would never be seen failing."""
    for name in job_names:
        WAIT.labels(name)
        RERUNS.labels(name)
        for outcome in OUTCOMES:
            DURATION.labels(name, outcome)


_reported: set[str] = set()


def record_queue(rows: Iterable[Mapping[str, Any]], known: Iterable[str]) -> None:
    """Set the queue gauges from QUEUE_SAMPLE's rows; a job absent from them is 0, if this
    worker runs it or reported it before (a job another worker runs, dropped or done,
    must not stay at its last value)."""
    seen = {row["entrypoint"]: row for row in rows}
    _reported.update(known, seen)
    for job in _reported:
        row = seen.get(job, {})
        QUEUED.labels(job).set(row.get("queued", 0))
        RUNNING.labels(job).set(row.get("running", 0))
        FAILED.labels(job).set(row.get("failed", 0))
        OLDEST.labels(job).set(row.get("oldest", 0.0))


def serve(port: int) -> None:
    """Serve REGISTRY on every address of the container, from a thread of the library's."""
    start_http_server(port, registry=REGISTRY)
