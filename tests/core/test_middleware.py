"""Request ids: kept when well-formed, generated otherwise, returned, and logged."""

from __future__ import annotations

import json
import logging
import logging.config
import uuid
from collections.abc import Iterator

import pytest
import structlog
from httpx import AsyncClient

from app.core.config import Settings
from app.core.logging import build_logging_config
from tests.conftest import UNREACHABLE_REDIS, AppClientMaker, with_overrides


@pytest.mark.parametrize("incoming", ["abc-123", "trace.id:42_x", str(uuid.uuid4()), "a" * 128])
async def test_well_formed_request_id_is_kept(client: AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming})
    assert response.headers["x-request-id"] == incoming


@pytest.mark.parametrize("incoming", ["", "has space", "a" * 129, "semi;colon", "new\\nline"])
async def test_malformed_request_id_is_replaced(client: AsyncClient, incoming: str) -> None:
    response = await client.get("/health", headers={"X-Request-ID": incoming})
    generated = response.headers["x-request-id"]
    assert generated != incoming
    assert uuid.UUID(hex=generated)


async def test_each_request_gets_its_own_id(client: AsyncClient) -> None:
    first = (await client.get("/health")).headers["x-request-id"]
    second = (await client.get("/health")).headers["x-request-id"]
    assert first != second


class EventList(logging.Handler):
    """Keeps the structured event of each record logged under `app`."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.msg, dict):
            self.events.append({"logger": record.name, **record.msg})

    def of(self, logger: str) -> list[dict[str, object]]:
        return [event for event in self.events if event["logger"] == logger]


@pytest.fixture
def app_logs() -> Iterator[EventList]:
    # On the "app" logger, not the root: create_app() reconfigures the root's handlers.
    handler = EventList()
    logging.getLogger("app").addHandler(handler)
    yield handler
    logging.getLogger("app").removeHandler(handler)


async def test_one_access_line_per_request_with_the_request_id(
    client: AsyncClient, app_logs: EventList
) -> None:
    await client.get("/api/v1/items", params={"limit": 1}, headers={"X-Request-ID": "req-1"})
    [line] = app_logs.of("app.access")
    assert line["event"] == "request"
    assert line["request_id"] == "req-1"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/api/v1/items", 200)
    assert isinstance(line["duration_ms"], float)


async def test_request_id_is_on_every_line_of_the_request(
    make_client: AppClientMaker, settings: Settings, app_logs: EventList
) -> None:
    """A warning the app logs mid-request (Redis is down, so the limiter skips) carries the id."""
    client = await make_client(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    await client.post("/api/v1/items", json={"name": "x"}, headers={"X-Request-ID": "req-2"})
    [warning] = app_logs.of("app.core.rate_limit")
    assert warning["request_id"] == "req-2"
    assert warning["level"] == "warning"
    [access] = app_logs.of("app.access")
    assert access["request_id"] == "req-2"


def test_standard_library_lines_get_the_request_id_in_json() -> None:
    """Lines from uvicorn, gunicorn or SQLAlchemy are plain logging records; the shared
    formatter adds the bound request id and renders one JSON object per line."""
    formatter = logging.config.DictConfigurator(
        build_logging_config("INFO", "json")
    ).configure_formatter(build_logging_config("INFO", "json")["formatters"]["structured"])
    record = logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    structlog.contextvars.bind_contextvars(request_id="req-3")
    try:
        line = json.loads(formatter.format(record))
    finally:
        structlog.contextvars.clear_contextvars()
    assert line["event"] == "hello x"
    assert line["request_id"] == "req-3"
    assert line["logger"] == "uvicorn.error"
    assert line["level"] == "info"
    assert "timestamp" in line


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
