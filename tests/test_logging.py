"""What the server really writes to stdout: one JSON format, request ids, no secrets,
no frame locals, each unhandled exception once, and quiet health probes.

The app runs under a real uvicorn process, as in production (the repeated "Exception in
ASGI application" comes from uvicorn itself, so an in-process client cannot show it);
its database and Redis URLs carry a known password, and Postgres and Redis are unreachable.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import structlog
from fastapi import FastAPI, Request

from app.core.auth.api_keys import generate_key
from app.core.config import LogFormat
from app.core.logging import REDACTED, app_processors, build_logging_config
from app.core.request_id import set_request_id
from app.core.state import app_state
from app.main import create_app

KNOWN_PASSWORD = "KNOWN-PASSWORD-123"
DATABASE_URL = f"postgresql://app:{KNOWN_PASSWORD}@127.0.0.1:1/x"
REDIS_URL = f"redis://:{KNOWN_PASSWORD}@127.0.0.1:1/0"  # Redis's password alone: no user
# Credentials the requests carry and the careless route logs: none may reach a line.
KNOWN_API_KEY = generate_key().plaintext
KNOWN_TOKEN = jwt.encode({"sub": "mallory"}, "not-a-real-key-but-a-real-jwt-shape", "HS256")
# sak_<16 hex>_<secret>: the id is kept in logs (it names the key), the secret never.
KEY_ID, KEY_SECRET = KNOWN_API_KEY[:20], KNOWN_API_KEY[21:]
SECRETS = (KNOWN_PASSWORD, KEY_SECRET, KNOWN_TOKEN.rsplit(".", 1)[1])

Line = dict[str, Any]


def app_that_fails() -> FastAPI:
    """The app, plus routes that fail or log carelessly (uvicorn --factory imports this)."""
    app = create_app()

    @app.get("/fail/database")
    async def fail_on_the_database(request: Request) -> None:
        try:
            # asyncpg's frames hold the password in their locals while they connect.
            async with app_state(request)["engine"].connect():
                pass
        except OSError as exc:
            url = app_state(request)["settings"].sqlalchemy_url
            raise RuntimeError(f"cannot reach {url}") from exc

    @app.get("/log/carelessly")
    async def log_carelessly(request: Request) -> dict[str, str]:
        settings = app_state(request)["settings"]
        structlog.get_logger("tests.careless").warning(
            "connecting",
            url=settings.sqlalchemy_url,
            redis_url=settings.redis_url,  # not a str: rendered as text, then masked
            password=KNOWN_PASSWORD,
            settings=settings,
        )
        logging.getLogger("tests.careless").warning(
            "connecting to %s and %s", settings.sqlalchemy_url, settings.redis_url
        )
        careless = structlog.get_logger("tests.careless")
        careless.warning(f"caller sent {request.headers.get('authorization')}")
        careless.warning("caller", presented=request.headers.get("x-api-key"))
        logging.getLogger("tests.careless").warning("key %s", request.headers.get("x-api-key"))
        return {"status": "logged"}

    return app


@dataclass
class ServerRun:
    """Everything one uvicorn process wrote, stdout and stderr, until it stopped."""

    output: str

    @property
    def lines(self) -> list[Line]:
        return [json.loads(line) for line in self.output.splitlines() if line.strip()]

    def of_request(self, request_id: str) -> list[Line]:
        return [line for line in self.lines if line.get("request_id") == request_id]

    def access(self, request_id: str) -> Line:
        [line] = [line for line in self.of_request(request_id) if line["logger"] == "app.access"]
        return line


def run_server(directory: Path, log_level: str, requests: list[tuple[str, str, str]]) -> ServerRun:
    """Start uvicorn on a Unix socket, send `requests` (method, path, request id), stop it.
    Every request carries an API key; those whose id starts "token-" a bearer token too.
    (No issuer is set, so bearer tokens are refused: a 401, logged like any request.)"""
    sock = directory / f"uvicorn-{log_level}.sock"
    env = os.environ | {
        "ENVIRONMENT": "production",
        "LOG_LEVEL": log_level,
        "LOG_FORMAT": "json",
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", f"{__name__}:app_that_fails"]
    output: list[str] = []
    with subprocess.Popen(  # noqa: S603  # our own interpreter and arguments
        [*command, "--uds", str(sock)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as server:
        # Read while it runs: a server blocked on a full pipe would stall every request.
        stdout = server.stdout
        assert stdout is not None
        reader = threading.Thread(target=lambda: output.append(stdout.read()))
        reader.start()
        try:
            wait_for_socket(sock, server)
            for method, path, request_id in requests:
                send(sock, method, path, request_id)
        finally:
            server.terminate()
            reader.join(timeout=30)
            print("".join(output))  # pytest shows it when a test fails
    return ServerRun("".join(output))


def send(sock: Path, method: str, path: str, request_id: str) -> None:
    # A new connection each time: uvicorn closes one after an unhandled exception.
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=10) as client:
        body = {"name": "written while logging"} if method == "POST" else None
        headers = {"X-Request-ID": request_id, "X-API-Key": KNOWN_API_KEY}
        if request_id.startswith("token-"):
            headers = {"X-Request-ID": request_id, "Authorization": f"Bearer {KNOWN_TOKEN}"}
        if path == "/log/carelessly":
            headers["Authorization"] = f"Bearer {KNOWN_TOKEN}"
        client.request(method, f"http://test{path}", headers=headers, json=body)


def wait_for_socket(sock: Path, server: subprocess.Popen[str], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail("the server exited before it listened (see its output)")
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(sock))
            except OSError:
                time.sleep(0.1)
            else:
                return
    pytest.fail("the server did not start")


@pytest.fixture(scope="module")
def info_run(tmp_path_factory: pytest.TempPathFactory) -> ServerRun:
    return run_server(
        tmp_path_factory.mktemp("info"),
        "INFO",
        [
            ("GET", "/fail/database", "fail-1"),
            ("GET", "/log/carelessly", "careless-1"),
            ("GET", "/api/v1/items", "list-1"),
            ("GET", "/api/v1/items", "token-1"),
            ("POST", "/api/v1/items", "write-1"),
            ("GET", "/health", "live-1"),
            ("GET", "/health/ready", "ready-1"),
            ("GET", "/nowhere", "missing-1"),
        ],
    )


@pytest.fixture(scope="module")
def debug_run(tmp_path_factory: pytest.TempPathFactory) -> ServerRun:
    return run_server(tmp_path_factory.mktemp("debug"), "DEBUG", [("GET", "/health", "live-2")])


def test_every_line_is_json_in_one_format(info_run: ServerRun) -> None:
    """uvicorn's lifecycle lines and the app's lines alike: json.loads would fail otherwise."""
    lines = info_run.lines
    assert {"Started server process", "Application startup complete."} <= {
        line["event"].split(" [")[0] for line in lines
    }
    for line in lines:
        assert {"event", "level", "logger", "timestamp"} <= line.keys()


def test_no_line_contains_the_database_or_redis_password(info_run: ServerRun) -> None:
    assert info_run.output.count("KNOWN-PASSWORD") == 0
    # The careless lines were written, with the secrets masked.
    structured, stdlib = info_run.of_request("careless-1")[:2]
    assert structured["password"] == REDACTED
    assert structured["url"] == f"postgresql+asyncpg://app:{REDACTED}@127.0.0.1:1/x"
    assert structured["redis_url"] == f"redis://:{REDACTED}@127.0.0.1:1/0"
    assert structured["settings"] == "<Settings omitted>"
    assert stdlib["event"] == (
        f"connecting to postgresql+asyncpg://app:{REDACTED}@127.0.0.1:1/x"
        f" and redis://:{REDACTED}@127.0.0.1:1/0"
    )


def test_no_line_contains_a_token_or_an_api_key(info_run: ServerRun) -> None:
    """Requests carried them, and a careless route logged them three ways: as text in
    the message, under a harmless key, and through the standard library."""
    for secret in SECRETS:
        assert secret not in info_run.output
    careless = info_run.of_request("careless-1")[2:5]
    assert careless[0]["event"] == f"caller sent Bearer {REDACTED}"
    assert careless[1]["presented"] == f"{KEY_ID}_{REDACTED}"
    assert careless[2]["event"] == f"key {KEY_ID}_{REDACTED}"


@pytest.mark.examples
def test_access_lines_name_the_principal_only_once_authenticated(info_run: ServerRun) -> None:
    refused = info_run.access("token-1")  # bearer tokens are off: no issuer is set
    assert refused["status"] == 401
    assert refused["principal"] is None


def test_tracebacks_carry_no_frame_locals(info_run: ServerRun) -> None:
    exceptions = [exc for line in info_run.lines for exc in line.get("exception", [])]
    assert exceptions  # the failure below, and the OSError it was raised from
    for exc in exceptions:
        for frame in exc["frames"]:
            assert "locals" not in frame
    assert any("asyncpg" in frame["filename"] for exc in exceptions for frame in exc["frames"])


def test_an_unhandled_exception_is_logged_once_with_the_request_id(info_run: ServerRun) -> None:
    with_traceback = [line for line in info_run.lines if "exception" in line]
    assert len(with_traceback) == 1
    [line] = with_traceback
    assert line == info_run.access("fail-1")
    assert (line["level"], line["status"], line["path"]) == ("error", 500, "/fail/database")
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert not [ln for ln in info_run.lines if "Exception in ASGI" in ln["event"]]


@pytest.mark.examples
def test_request_id_is_on_every_line_of_the_request(info_run: ServerRun) -> None:
    """Redis and Postgres are down: the app warns mid-request, then answers 503. Those
    warnings carry the request id, as the access line does."""
    lines = info_run.of_request("write-1")
    warnings = [line for line in lines if line["logger"] != "app.access"]
    assert warnings
    assert {line["level"] for line in warnings} == {"warning"}
    assert (lines[-1]["logger"], lines[-1]["status"], lines[-1]["level"]) == (
        "app.access",
        503,
        "warning",
    )


def test_access_line(info_run: ServerRun) -> None:
    line = info_run.access("missing-1")
    assert (line["event"], line["level"], line["method"], line["path"], line["status"]) == (
        "request",
        "info",
        "GET",
        "/nowhere",
        404,
    )
    assert isinstance(line["duration_ms"], float)


def test_passing_health_probes_are_not_logged_at_info(info_run: ServerRun) -> None:
    assert info_run.of_request("live-1") == []
    # Readiness fails (Postgres is down): that is worth a line.
    assert info_run.access("ready-1")["level"] == "warning"


def test_health_probes_are_logged_at_debug(debug_run: ServerRun) -> None:
    assert debug_run.access("live-2")["level"] == "debug"


def test_standard_library_lines_get_the_request_id_in_json() -> None:
    """Lines from uvicorn, gunicorn or SQLAlchemy are plain logging records; the shared
    formatter adds the request id and renders the same JSON as the app's own lines."""
    config = build_logging_config("INFO", "json")
    formatter = logging.config.DictConfigurator(config).configure_formatter(
        config["formatters"]["structured"]
    )
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "hello %s", ("x",), None)

    def format_during_a_request() -> str:
        set_request_id("req-3")
        return str(formatter.format(record))

    line = json.loads(contextvars.copy_context().run(format_during_a_request))
    assert line["event"] == "hello x"
    assert line["request_id"] == "req-3"
    assert line["logger"] == "uvicorn.error"
    assert line["level"] == "info"
    assert "timestamp" in line


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_a_value_the_encoder_refuses_is_written_escaped_not_lost(fmt: LogFormat) -> None:
    """A lone surrogate (from a client's JSON) or an integer past 64 bits: orjson and a
    UTF-8 encode refuse them, and the line would be lost with an error in the request."""
    renderers = app_processors(fmt)[-1:] if fmt == "json" else app_processors(fmt)[-2:]
    line: Any = {"event": "odd", "text": "a\ud800b", "count": 10**30}
    for render in renderers:  # the renderer (and for the console, its encoding)
        line = render(None, "info", line)
    line = line.decode()
    written = str(json.loads(line)["text"]) if fmt == "json" else line
    assert "a\\ud800b" in written  # the surrogate's escape, as text
    assert str(10**30) in line


def test_library_loggers_share_the_root_handler() -> None:
    """uvicorn, gunicorn and SQLAlchemy records go through the one structured formatter."""
    config = build_logging_config("INFO", "json")
    for name in ("uvicorn", "uvicorn.error", "gunicorn.error", "sqlalchemy"):
        assert config["loggers"][name] == {"handlers": [], "propagate": True}
    assert config["loggers"]["uvicorn.access"]["propagate"] is False  # replaced by app.access
    assert config["root"]["handlers"] == ["stdout"]
    assert config["loggers"]["sqlalchemy.engine"]["level"] == "WARNING"
    assert build_logging_config("DEBUG", "console")["loggers"]["sqlalchemy.engine"]["level"] == (
        "INFO"
    )
