"""What metrics add to one request, measured in-process (no network, no server).

    PROMETHEUS_MULTIPROC_DIR=/dev/shm/metrics-cost python -m template.metrics_cost

Builds the app twice on the same settings, metrics off and on, and calls GET /health
through each ASGI stack in turn (rounds interleaved, best round kept). Run it with
PROMETHEUS_MULTIPROC_DIR set, as under Gunicorn: each write then goes to a memory-mapped
file. The access line is written as shipped, to /dev/null. `make bench` measures the same
cost through Gunicorn and the network (the "metrics on" row); this one is steadier on a
busy machine. Needs DATABASE_URL (nothing connects).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from pathlib import Path

from asgi_lifespan import LifespanManager
from fastapi import FastAPI

REQUESTS = int(os.environ.get("METRICS_COST_REQUESTS", "20000"))
ROUNDS = int(os.environ.get("METRICS_COST_ROUNDS", "5"))


async def serve(app: FastAPI, state: dict[str, object], count: int) -> float:
    """Seconds per GET /health, through the whole ASGI stack."""
    scope_base = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/health",
        "raw_path": b"/health",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, object]:
        return request

    async def send(_: object) -> None:
        return None

    started = time.perf_counter()
    for _ in range(count):
        await app({**scope_base, "state": state.copy()}, receive, send)
    return (time.perf_counter() - started) / count


async def main() -> None:
    from app.core.config import load_settings  # noqa: PLC0415  # after the directory is set
    from app.main import create_app  # noqa: PLC0415

    settings = load_settings()
    apps = {
        "off": create_app(settings.model_copy(update={"metrics_enabled": False})),
        "on": create_app(settings.model_copy(update={"metrics_enabled": True})),
    }
    best = dict.fromkeys(apps, float("inf"))
    states: dict[str, dict[str, object]] = {}
    async with contextlib.AsyncExitStack() as stack:
        for name, app in apps.items():
            manager = await stack.enter_async_context(LifespanManager(app))
            states[name] = manager._state  # the lifespan state a server keeps
            await serve(app, states[name], 1000)  # warm-up: label children, caches
        for round_number in range(ROUNDS):
            # Alternate which goes first: the second of a pair runs on a warmer CPU.
            names = list(apps) if round_number % 2 == 0 else list(apps)[::-1]
            for name in names:
                best[name] = min(best[name], await serve(apps[name], states[name], REQUESTS))
    off, on = best["off"] * 1e6, best["on"] * 1e6
    report = sys.stderr  # stdout is the access log, sent to /dev/null
    print(f"GET /health in-process, best of {ROUNDS} x {REQUESTS} requests:", file=report)
    print(f"  metrics off  {off:7.1f} us/request", file=report)
    change = f"{on - off:+.1f} us, {on / off - 1:+.1%}"
    print(f"  metrics on   {on:7.1f} us/request  ({change})", file=report)


if __name__ == "__main__":
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory is None:
        sys.exit("set PROMETHEUS_MULTIPROC_DIR (a tmpfs directory), as Gunicorn does")
    shutil.rmtree(directory, ignore_errors=True)
    Path(directory).mkdir(parents=True)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        asyncio.run(main())
