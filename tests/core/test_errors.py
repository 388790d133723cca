"""Every error is application/problem+json with the request id; nothing is echoed or leaked."""

from __future__ import annotations

import pytest
from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import UNREACHABLE_POSTGRES, with_overrides
from tests.core.conftest import CoreClientMaker
from tests.core.problems import assert_problem


@pytest.mark.parametrize(
    ("method", "path", "json", "status"),
    [
        ("GET", "/probe/teapot", None, 418),
        ("GET", "/no/such/route", None, 404),
        ("DELETE", "/probe/teapot", None, 405),
        ("POST", "/probe/echo", {"name": 5}, 422),
    ],
)
async def test_errors_are_problem_json(
    core_client: AsyncClient, method: str, path: str, json: object, status: int
) -> None:
    response = await core_client.request(method, path, json=json)
    assert assert_problem(response, status)["instance"] == path


async def test_405_allows_every_method_of_the_path(core_client: AsyncClient) -> None:
    response = await core_client.put("/probe/limited")
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"
    response = await core_client.delete("/probe/widgets")
    assert response.headers["allow"] == "GET, HEAD"


async def test_validation_errors_never_echo_the_input(core_client: AsyncClient) -> None:
    secret = "hunter2-this-is-a-password"
    response = await core_client.post(
        "/probe/echo", json={"id": "not-a-uuid", "name": 5, "password": secret}
    )
    body = assert_problem(response, 422)
    assert secret not in response.text
    assert "not-a-uuid" not in response.text
    errors = body["errors"]
    assert isinstance(errors, list)
    assert {(e["location"], e["field"]) for e in errors} == {("body", "id"), ("body", "name")}
    for error in errors:
        assert error.keys() == {"location", "field", "detail"}


async def test_malformed_json_says_so(core_client: AsyncClient) -> None:
    response = await core_client.post(
        "/probe/echo", content=b'{"name": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {"location": "body", "field": None, "detail": "Body is not valid JSON."}
    ]


async def test_unhandled_error_is_500_without_exception_text(core_client: AsyncClient) -> None:
    response = await core_client.get("/probe/boom")
    body = assert_problem(response, 500)
    assert body["detail"] == "An internal error occurred."
    assert "swordfish" not in response.text
    assert "RuntimeError" not in response.text


async def test_an_oserror_that_is_not_the_network_is_500(core_client: AsyncClient) -> None:
    response = await core_client.get("/probe/missing-file")
    assert_problem(response, 500)
    assert "secret-file" not in response.text


@pytest.mark.parametrize(
    "database_url",
    [
        UNREACHABLE_POSTGRES,
        # Two addresses (::1, 127.0.0.1), each refused: asyncio raises one plain OSError.
        UNREACHABLE_POSTGRES.replace("127.0.0.1", "localhost"),
    ],
)
async def test_postgres_down_is_503_problem_with_retry_after(
    make_core_client: CoreClientMaker, settings: Settings, database_url: str
) -> None:
    client = await make_core_client(
        with_overrides(settings, database_url=database_url), isolated=False
    )
    response = await client.get("/probe/db")
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    assert "nobody" not in response.text  # nothing from the URL or the exception
