"""Every error is application/problem+json with the request id; nothing is echoed or leaked."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from app.core.config import Settings
from app.main import create_app
from tests.conftest import UNREACHABLE_POSTGRES, AppClientMaker, with_overrides

PROBLEM_FIELDS = {"type", "title", "status", "instance", "request_id", "detail"}


def assert_problem(response_status: int, body: dict[str, object], headers: dict[str, str]) -> None:
    assert headers["content-type"] == "application/problem+json"
    assert body.keys() >= PROBLEM_FIELDS
    assert body["status"] == response_status
    assert body["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize(
    ("method", "path", "json", "status"),
    [
        ("GET", "/api/v1/items/00000000-0000-0000-0000-000000000000", None, 404),
        ("GET", "/no/such/route", None, 404),
        ("DELETE", "/health", None, 405),
        ("POST", "/api/v1/items", {"name": ""}, 422),
    ],
)
async def test_errors_are_problem_json(
    client: AsyncClient, method: str, path: str, json: object, status: int
) -> None:
    response = await client.request(method, path, json=json)
    assert response.status_code == status
    assert_problem(status, response.json(), dict(response.headers))
    assert response.json()["instance"] == path


async def test_validation_errors_never_echo_the_input(client: AsyncClient) -> None:
    secret = "hunter2-this-is-a-password"
    response = await client.post(
        "/api/v1/items", json={"name": "x" * 201, "description": 5, "password": secret}
    )
    assert response.status_code == 422
    assert secret not in response.text
    assert "x" * 201 not in response.text
    fields = {(e["location"], e["field"]) for e in response.json()["errors"]}
    assert fields == {("body", "name"), ("body", "description"), ("body", "password")}
    for error in response.json()["errors"]:
        assert error.keys() == {"location", "field", "detail"}


async def test_malformed_json_is_422_problem(client: AsyncClient) -> None:
    response = await client.post(
        "/api/v1/items", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert_problem(422, response.json(), dict(response.headers))


async def test_unhandled_error_is_500_without_exception_text(
    make_client: AppClientMaker, settings: Settings
) -> None:
    app: FastAPI = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("database password is swordfish")

    client = await make_client(settings, app)
    response = await client.get("/boom")
    assert response.status_code == 500
    assert_problem(500, response.json(), dict(response.headers))
    assert response.json()["detail"] == "An internal error occurred."
    assert "swordfish" not in response.text
    assert "RuntimeError" not in response.text


async def test_postgres_down_is_503_problem_with_retry_after(
    make_client: AppClientMaker, settings: Settings
) -> None:
    client = await make_client(
        with_overrides(settings, database_url=UNREACHABLE_POSTGRES), isolated=False
    )
    for method, path, json in [
        ("GET", "/api/v1/items", None),
        ("GET", "/api/v1/items/00000000-0000-0000-0000-000000000000", None),
        ("POST", "/api/v1/items", {"name": "lost"}),
    ]:
        response = await client.request(method, path, json=json)
        assert response.status_code == 503, (method, path, response.text)
        assert_problem(503, response.json(), dict(response.headers))
        assert response.headers["retry-after"] == "5"
        assert "nobody" not in response.text  # nothing from the URL or the exception
