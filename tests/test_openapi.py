"""The OpenAPI document says what the API sends: problem+json errors, clean ids."""

from __future__ import annotations

from typing import Any

import pytest
from httpx import AsyncClient

from app.core.errors import PROBLEM_JSON

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


async def operations(client: AsyncClient) -> list[tuple[str, str, dict[str, Any]]]:
    document = (await client.get("/openapi.json")).json()
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    ]


async def test_every_error_response_is_problem_json(client: AsyncClient) -> None:
    for path, method, operation in await operations(client):
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and path != "/health/ready":
                assert list(response["content"]) == [PROBLEM_JSON], (method, path, status)
        assert "500" in operation["responses"], (method, path)


async def test_fastapis_own_validation_schema_is_gone(client: AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert "Problem" in schemas
    assert "HTTPValidationError" not in schemas


@pytest.mark.examples
async def test_operation_ids_are_the_handler_names(client: AsyncClient) -> None:
    ids = [operation["operationId"] for _, _, operation in await operations(client)]
    assert len(ids) == len(set(ids))
    assert "create_item" in ids
    assert all(operation.get("description") for _, _, operation in await operations(client))


@pytest.mark.examples
async def test_patch_documents_name_as_a_string_not_null(client: AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["ItemUpdate"]
    assert schema["properties"]["name"]["type"] == "string"
