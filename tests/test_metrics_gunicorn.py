"""Metrics under a real Gunicorn with two workers: the master's scrape sums every
worker's counts, and a killed worker's counts survive it while its restart is counted."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
REQUESTS = 200
# The request counter: the latency histogram's count, summed over the workers' files.
COUNT = "http_request_duration_seconds_count"
IN_FLIGHT = "http_requests_in_flight"
# A worker boots in about a second; a loaded CI machine may take many more.
BOOT_SECONDS = 90


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Scrape:
    samples: dict[str, list[tuple[dict[str, str], float]]]

    def total(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_labels, value in self.samples.get(name, [])
            if labels.items() <= sample_labels.items()
        )

    def worker_pids(self) -> set[int]:
        """The workers alive, from the per-worker (liveall) breaker gauge."""
        return {int(labels["pid"]) for labels, _ in self.samples.get("redis_breaker_state", [])}


@dataclass
class Gunicorn:
    process: subprocess.Popen[bytes]
    app_url: str
    metrics_url: str
    log: Path

    async def scrape(self) -> Scrape:
        async with httpx.AsyncClient() as client:
            response = await client.get(self.metrics_url)
        response.raise_for_status()
        samples: dict[str, list[tuple[dict[str, str], float]]] = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
        return Scrape(samples)

    async def wait_for(self, what: str, check: object) -> Scrape:
        """Scrape until `check(scrape)` holds, or fail with Gunicorn's log."""
        assert callable(check)
        for _ in range(BOOT_SECONDS * 4):
            assert self.process.poll() is None, self.log.read_text()
            try:
                scrape = await self.scrape()
            except httpx.HTTPError:
                scrape = None
            if scrape is not None and check(scrape):
                return scrape
            await asyncio.sleep(0.25)
        pytest.fail(f"gave up waiting for {what}:\n{self.log.read_text()[-4000:]}")

    async def get_many(self, path: str, count: int) -> None:
        """`count` requests, each on a new connection, so both workers get some."""
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.app_url, limits=limits) as client:
            for _ in range(count):
                assert (await client.get(path)).status_code == 200


@pytest.fixture
def gunicorn(settings: Settings, tmp_path: Path) -> Iterator[Gunicorn]:
    app_port, metrics_port = free_port(), free_port()
    env = os.environ | {
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.sqlalchemy_url,
        "REDIS_URL": str(settings.redis_url),
        "HOST": "127.0.0.1",
        "PORT": str(app_port),
        "METRICS_PORT": str(metrics_port),
        "METRICS_ENABLED": "true",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
        "WEB_CONCURRENCY": "2",
        "GUNICORN_MAX_REQUESTS": "0",
        "LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # a fixed command
            ["gunicorn", "-c", "gunicorn_conf.py", "app.main:app"],  # noqa: S607
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(
        process, f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{metrics_port}/metrics", log
    )
    try:
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_counts_sum_across_workers_and_survive_a_killed_one(gunicorn: Gunicorn) -> None:
    started = await gunicorn.wait_for("two workers", lambda s: len(s.worker_pids()) == 2)
    assert started.total("gunicorn_worker_restarts_total") == 0

    await gunicorn.get_many("/health", REQUESTS)
    scrape = await gunicorn.scrape()
    assert scrape.total(COUNT, route="/health", method="GET", status="2xx") == REQUESTS
    # Gauges are published once a second by each worker.
    await gunicorn.wait_for("no request in flight", lambda s: s.total(IN_FLIGHT) == 0)

    victim = min(scrape.worker_pids())
    os.kill(victim, signal.SIGKILL)
    after = await gunicorn.wait_for(
        "a replacement worker",
        lambda s: (
            s.total("gunicorn_worker_restarts_total") == 1
            and len(s.worker_pids()) == 2
            and victim not in s.worker_pids()
        ),
    )
    # The killed worker's files stay in the sum: nothing it counted is lost.
    assert after.total(COUNT, route="/health") == REQUESTS

    await gunicorn.get_many("/health", 10)
    final = await gunicorn.scrape()
    assert final.total(COUNT, route="/health") == REQUESTS + 10
    # How full the files' filesystem is: the killed worker's files stay on it.
    assert 0 < final.total("gunicorn_metrics_dir_used_ratio") < 1
