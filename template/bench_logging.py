"""What an access line costs: the old logging path against the new one, side by side.

    python template/bench_logging.py            # in the dev image: make bench-logging
    python template/bench_logging.py --lines 50000 --requests 20000 --rounds 5

1. Lines: N access lines through the old path (stdlib `logging` + structlog's
   ProcessorFormatter, json.dumps) and through the app's path (structlog's native bound
   logger, orjson, bytes), both written to /dev/null. Prints lines/s and the ratio.
2. Requests: GET through the real app in process (no server, no network), with the old
   middleware + logging and with the new, to show what the difference buys per request.
   /health is a probe (not logged at INFO any more); /ping is the same handler, logged.

Every variant runs in each round, in turn; the median of the rounds is reported.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
# app.main builds an app on import, from the environment: give it one that connects nowhere.
BENCH_ENVIRONMENT = {
    "ENVIRONMENT": "production",
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "json",
    "DATABASE_URL": "postgresql://bench:bench@127.0.0.1:1/bench",
}
os.environ.update(BENCH_ENVIRONMENT)

import structlog  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.datastructures import Headers, MutableHeaders  # noqa: E402
from starlette.middleware import Middleware  # noqa: E402
from starlette.types import ASGIApp, Message, Receive, Scope, Send  # noqa: E402

from app.core.config import load_settings  # noqa: E402
from app.core.logging import app_processors  # noqa: E402
from app.core.middleware import RequestContextMiddleware  # noqa: E402
from app.core.request_id import REQUEST_ID_HEADER, accept_or_generate, set_request_id  # noqa: E402
from app.main import create_app  # noqa: E402

ACCESS_FIELDS: dict[str, Any] = {
    "method": "GET",
    "path": "/api/v1/items/42",
    "status": 200,
    "duration_ms": 0.42,
    "client": "172.18.0.5",
}


# --- The old path, as it was before this change (stdlib logging + ProcessorFormatter) ---


def _drop_color_message(_: Any, __: str, event_dict: Any) -> Any:
    event_dict.pop("color_message", None)
    return event_dict


def _old_shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.ExtraAdder(),
        _drop_color_message,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]


def old_access_logger(sink: io.TextIOBase) -> Any:
    handler = logging.StreamHandler(sink)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_old_shared_processors(),
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    stdlib_logger = logging.getLogger("bench.old.access")
    stdlib_logger.handlers = [handler]
    stdlib_logger.propagate = False
    stdlib_logger.setLevel(logging.INFO)
    return structlog.wrap_logger(
        stdlib_logger,
        processors=[
            *_old_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def new_access_logger(sink: io.BufferedIOBase) -> Any:
    return structlog.wrap_logger(
        structlog.BytesLogger(sink, name="app.access"),  # type: ignore[arg-type]
        processors=app_processors("json"),
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
    )


class OldRequestContextMiddleware:
    """The middleware before this change, logging through `logger`."""

    def __init__(self, app: ASGIApp, logger: Any) -> None:
        self.app = app
        self.logger = logger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = accept_or_generate(Headers(scope=scope).get(REQUEST_ID_HEADER))
        set_request_id(request_id)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status_code = 500
        started = time.perf_counter()

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            self.logger.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client=scope["client"][0] if scope.get("client") else None,
            )


# --- Measurements ---------------------------------------------------------------------


def lines_per_second(log: Callable[..., Any], lines: int) -> float:
    started = time.perf_counter()
    for _ in range(lines):
        log("request", **ACCESS_FIELDS)
    return lines / (time.perf_counter() - started)


def build_app(old_logger: Any | None) -> FastAPI:
    app = create_app(load_settings())

    async def ping() -> JSONResponse:
        return JSONResponse({"status": "pass"}, media_type="application/health+json")

    app.add_api_route("/ping", ping)
    if old_logger is not None:
        app.user_middleware = [
            Middleware(OldRequestContextMiddleware, logger=old_logger)
            if isinstance(entry.cls, type) and issubclass(entry.cls, RequestContextMiddleware)
            else entry
            for entry in app.user_middleware
        ]
    return app


async def requests_per_second(app: ASGIApp, path: str, requests: int) -> float:
    template: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
        "client": ("172.18.0.5", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    request_message: Message = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> Message:
        return request_message

    async def send(message: Message) -> None:
        pass

    async def one() -> None:
        await app(dict(template), receive, send)

    started = time.perf_counter()
    for _ in range(requests):
        await one()
    return requests / (time.perf_counter() - started)


def median_of(rounds: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, measure in variants.items():
            results[name].append(measure())
    return {name: statistics.median(values) for name, values in results.items()}


def request_rate(app: ASGIApp, path: str, requests: int) -> Callable[[], float]:
    return lambda: asyncio.run(requests_per_second(app, path, requests))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    out = sys.stdout

    with open(os.devnull, "w") as text_sink, open(os.devnull, "wb") as bytes_sink:
        old = old_access_logger(text_sink)
        new = new_access_logger(bytes_sink)
        structlog.contextvars.bind_contextvars(request_id="0123456789abcdef")  # old path
        set_request_id("0123456789abcdef")  # new path
        lines = median_of(
            args.rounds,
            {
                "old: stdlib logging + ProcessorFormatter": lambda: lines_per_second(
                    old.info, args.lines
                ),
                "new: structlog native + orjson": lambda: lines_per_second(new.info, args.lines),
                "new, below the level (a probe at INFO)": lambda: lines_per_second(
                    new.debug, args.lines
                ),
            },
        )
        structlog.contextvars.clear_contextvars()

        # The app's own lines go to stdout (taken on first use): /dev/null while they run.
        sys.stdout = text_sink
        try:
            apps = {"old": build_app(old), "new": build_app(None)}
            requests = median_of(
                args.rounds,
                {
                    f"{label} GET {path}": request_rate(app, path, args.requests)
                    for label, app in apps.items()
                    for path in ("/health", "/ping")
                },
            )
        finally:
            sys.stdout = out

    first = next(iter(lines.values()))
    print(f"Access lines, {args.lines} per round, median of {args.rounds} rounds")
    for name, rate in lines.items():
        print(f"  {name:<45} {rate:>12,.0f} lines/s   {rate / first:5.2f} x old")
    print(f"\nIn-process requests, {args.requests} per round, median of {args.rounds} rounds")
    for name, rate in requests.items():
        path = name.rsplit(" ", 1)[1]
        base = requests[f"old GET {path}"]
        print(f"  {name:<45} {rate:>12,.0f} req/s     {rate / base:5.2f} x old")
    print(f"\nPython {sys.version.split()[0]}, {os.cpu_count()} CPUs (shared: compare ratios)")


if __name__ == "__main__":
    main()
