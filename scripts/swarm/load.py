"""Steady load through the proxy until SIGTERM, then one JSON summary line on stdout.

    API_KEY=sak_... python3 scripts/swarm/load.py http://127.0.0.1:18480 [--workers 4] [--rate 15]

Each worker reads (GET /api/v1/items/{id} and ?limit=5) at --rate requests per
second over a keep-alive connection; one worker also writes (POST) once every two
seconds, under the app's write rate limit. Any answer but 2xx, and any connection
error or timeout, counts as a failure. Every request sends the API key in the API_KEY
environment variable as X-API-Key (not an argument, which `ps` would show). Standard
library only: runs on any host.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from types import FrameType
from urllib.parse import urlsplit

WRITE_EVERY_SECONDS = 2.0
# Every /api/v1 route needs a credential (docs/auth.md): a key with items:read and items:write.
API_KEY = os.environ.get("API_KEY", "")
# Item names are unique: each run, and each write in it, gets a name of its own.
RUN = f"{os.getpid()}-{time.time_ns()}"


@dataclass
class Tally:
    requests: int = 0
    failures: int = 0
    worst_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, ms: float, error: str | None) -> None:
        with self.lock:
            self.requests += 1
            self.latencies_ms.append(ms)
            self.worst_ms = max(self.worst_ms, ms)
            if error is not None:
                self.failures += 1
                if len(self.errors) < 10:  # the first few are enough to diagnose
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {error}")


def send(
    connection: http.client.HTTPConnection, method: str, path: str, body: dict[str, str] | None
) -> tuple[int, bytes]:
    payload = json.dumps(body).encode() if body is not None else None
    headers = {"x-api-key": API_KEY}
    if payload is not None:
        headers["content-type"] = "application/json"
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    return response.status, response.read()


def worker(
    base: str, *, rate: float, writes: bool, item_id: str, tally: Tally, stop: threading.Event
) -> None:
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=10)
    paths = [f"/api/v1/items/{item_id}", "/api/v1/items?limit=5"]
    next_write = time.monotonic()
    n = 0
    while not stop.is_set():
        started = time.monotonic()
        method, path, body = "GET", paths[n % len(paths)], None
        if writes and started >= next_write:
            method, path, body = (
                "POST",
                "/api/v1/items",
                {"name": f"load-{RUN}-{n}", "description": "swarm-e2e"},
            )
            next_write = started + WRITE_EVERY_SECONDS
        error = None
        try:
            status, _ = send(connection, method, path, body)
            if not 200 <= status < 300:
                error = f"{method} {path}: HTTP {status}"
        except (OSError, http.client.HTTPException) as exc:
            error = f"{method} {path}: {type(exc).__name__}: {exc}"
            connection.close()  # a fresh connection for the next request
        tally.record((time.monotonic() - started) * 1000, error)
        n += 1
        stop.wait(max(0.0, 1 / rate - (time.monotonic() - started)))
    connection.close()


def create_item(base: str) -> str:
    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80, timeout=10)
    status, body = send(
        connection, "POST", "/api/v1/items", {"name": f"load-{RUN}", "description": "read target"}
    )
    if status != 201:
        sys.exit(f"load: could not create the item to read: HTTP {status} {body[:200]!r}")
    return str(json.loads(body)["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", help="the proxy's base URL")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=15.0, help="requests per second per worker")
    args = parser.parse_args()
    if not API_KEY:
        sys.exit("load: set API_KEY (an API key with items:read and items:write)")

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    tally = Tally()
    item_id = create_item(args.base)
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=worker,
            args=(args.base,),
            kwargs={
                "rate": args.rate,
                "writes": i == 0,
                "item_id": item_id,
                "tally": tally,
                "stop": stop,
            },
        )
        for i in range(args.workers)
    ]
    for thread in threads:
        thread.start()
    while not stop.is_set():
        stop.wait(0.5)
    for thread in threads:
        thread.join()

    latencies = sorted(tally.latencies_ms) or [0.0]
    summary = {
        "seconds": round(time.monotonic() - started, 1),
        "requests": tally.requests,
        "failures": tally.failures,
        "p50_ms": round(latencies[len(latencies) // 2], 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, len(latencies) * 99 // 100)], 1),
        "worst_ms": round(tally.worst_ms, 1),
        "errors": tally.errors,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
