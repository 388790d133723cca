"""The items API, operation by operation, with its errors."""

from __future__ import annotations

import uuid

import pytest
from httpx import AsyncClient

from app.core.config import Settings
from tests.conftest import UNREACHABLE_REDIS, AppClientMaker, with_overrides
from tests.items.helpers import ITEMS, create


async def test_create_returns_201_with_location_and_server_fields(client: AsyncClient) -> None:
    response = await client.post(ITEMS, json={"name": "  widget  ", "description": "blue"})
    assert response.status_code == 201
    body = response.json()
    assert body["name"] == "widget"  # surrounding whitespace is not part of a name
    assert body["description"] == "blue"
    uuid.UUID(body["id"])
    assert body["created_at"] == body["updated_at"]
    assert response.headers["location"] == f"http://testserver{ITEMS}/{body['id']}"
    assert (await client.get(response.headers["location"])).json() == body


async def test_a_retried_create_gets_its_own_item_not_a_409(client: AsyncClient) -> None:
    key = {"Idempotency-Key": "create-apples-1"}
    first = await client.post(ITEMS, json={"name": "apples"}, headers=key)
    retried = await client.post(ITEMS, json={"name": "apples"}, headers=key)

    assert first.status_code == retried.status_code == 201
    assert retried.json() == first.json()
    assert retried.headers["idempotent-replayed"] == "true"
    other = await client.post(ITEMS, json={"name": "pears"}, headers=key)
    assert other.status_code == 422


async def test_create_refuses_client_supplied_server_fields(client: AsyncClient) -> None:
    response = await client.post(ITEMS, json={"name": "x", "id": str(uuid.uuid4())})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"location": "body", "field": "id", "detail": "Extra inputs are not permitted"}
    ]


async def test_duplicate_name_is_409(client: AsyncClient) -> None:
    await create(client, "unique")
    response = await client.post(ITEMS, json={"name": "unique"})
    assert response.status_code == 409
    assert response.json()["detail"] == "An item with this name already exists."
    # The failed insert rolled back cleanly: the API still works.
    assert len((await client.get(ITEMS)).json()["items"]) == 1


async def test_name_length_is_bounded(client: AsyncClient) -> None:
    assert (await client.post(ITEMS, json={"name": "n" * 200})).status_code == 201
    for bad in ("", "   ", "n" * 201):
        response = await client.post(ITEMS, json={"name": bad})
        assert response.status_code == 422, bad
        assert response.json()["errors"][0]["field"] == "name"


async def test_get_unknown_id_is_404(client: AsyncClient) -> None:
    missing = uuid.uuid4()
    response = await client.get(f"{ITEMS}/{missing}")
    assert response.status_code == 404
    assert response.json()["detail"] == f"Item {missing} does not exist."


async def test_get_malformed_id_is_422(client: AsyncClient) -> None:
    response = await client.get(f"{ITEMS}/not-a-uuid")
    assert response.status_code == 422
    error = response.json()["errors"][0]
    assert (error["location"], error["field"]) == ("path", "item_id")
    assert "not-a-uuid" not in error["detail"]  # the input is never echoed


async def test_list_pages_follow_the_cursor_to_every_item_once(client: AsyncClient) -> None:
    created = [(await create(client, f"item-{n}"))["id"] for n in range(5)]
    paged: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    while True:
        page = (await client.get(ITEMS, params=params)).json()
        paged += [item["id"] for item in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    # Every item once. (Here all share one timestamp, the test's transaction's, so
    # the id decides the order; tests/core/test_pagination.py checks the ordering.)
    assert sorted(paged) == sorted(created)
    assert paged == [item["id"] for item in (await client.get(ITEMS)).json()["items"]]


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"limit": 10**20}, {"cursor": "%%%"}]
)
async def test_list_bad_paging_is_422(client: AsyncClient, params: dict[str, str | int]) -> None:
    response = await client.get(ITEMS, params=params)
    assert response.status_code == 422
    assert response.json()["errors"][0]["location"] == "query"


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a\u0000b"},
        {"name": "line\nbreak"},
        {"name": "ok", "description": "nul \u0000 inside"},
    ],
)
async def test_control_characters_are_422_not_500(
    client: AsyncClient, body: dict[str, str]
) -> None:
    item = await create(client, "target")
    assert (await client.post(ITEMS, json=body)).status_code == 422
    assert (await client.patch(f"{ITEMS}/{item['id']}", json=body)).status_code == 422


async def test_descriptions_keep_line_breaks_and_tabs(client: AsyncClient) -> None:
    item = await create(client, "multi", "line one\n\tline two")
    assert item["description"] == "line one\n\tline two"


async def test_patch_changes_only_the_fields_sent(client: AsyncClient) -> None:
    item = await create(client, "before", "kept")
    response = await client.patch(f"{ITEMS}/{item['id']}", json={"name": "after"})
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["description"]) == ("after", "kept")
    # (updated_at's bump is not checked here: inside the test's one transaction,
    # now() does not move.)
    assert body["created_at"] == item["created_at"]

    cleared = await client.patch(f"{ITEMS}/{item['id']}", json={"description": None})
    assert cleared.json()["description"] is None
    assert cleared.json()["name"] == "after"


async def test_patch_rejects_null_name(client: AsyncClient) -> None:
    item = await create(client, "named")
    response = await client.patch(f"{ITEMS}/{item['id']}", json={"name": None})
    assert response.status_code == 422
    assert "cannot be null" in response.json()["errors"][0]["detail"]


async def test_patch_to_a_taken_name_is_409(client: AsyncClient) -> None:
    await create(client, "first")
    second = await create(client, "second")
    response = await client.patch(f"{ITEMS}/{second['id']}", json={"name": "first"})
    assert response.status_code == 409
    assert (await client.get(f"{ITEMS}/{second['id']}")).json()["name"] == "second"


async def test_patch_unknown_id_is_404(client: AsyncClient) -> None:
    response = await client.patch(f"{ITEMS}/{uuid.uuid4()}", json={"name": "x"})
    assert response.status_code == 404


async def test_delete_is_204_then_404(client: AsyncClient) -> None:
    item = await create(client, "doomed")
    response = await client.delete(f"{ITEMS}/{item['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert "content-type" not in response.headers
    assert (await client.get(f"{ITEMS}/{item['id']}")).status_code == 404
    assert (await client.delete(f"{ITEMS}/{item['id']}")).status_code == 404


async def test_items_work_while_redis_is_down(
    make_client: AppClientMaker, settings: Settings
) -> None:
    """Redis is a cache and a limiter: without it reads and writes still succeed."""
    client = await make_client(with_overrides(settings, redis_url=UNREACHABLE_REDIS))
    item = await create(client, "resilient")
    assert (await client.get(f"{ITEMS}/{item['id']}")).json()["name"] == "resilient"
    patched = await client.patch(f"{ITEMS}/{item['id']}", json={"name": "still"})
    assert patched.status_code == 200
    assert (await client.delete(f"{ITEMS}/{item['id']}")).status_code == 204


@pytest.mark.parametrize(
    ("method", "path", "json"),
    [
        ("POST", ITEMS, {"name": "limited"}),
        ("PATCH", f"{ITEMS}/{uuid.uuid5(uuid.NAMESPACE_URL, 'absent')}", {"name": "x"}),
        ("DELETE", f"{ITEMS}/{uuid.uuid5(uuid.NAMESPACE_URL, 'absent')}", None),
    ],
)
async def test_every_write_is_rate_limited(
    make_client: AppClientMaker,
    settings: Settings,
    method: str,
    path: str,
    json: dict[str, str] | None,
) -> None:
    client = await make_client(with_overrides(settings, rate_limit_writes=1))
    first = await client.request(method, path, json=json)
    assert first.status_code != 429
    second = await client.request(method, path, json=json)
    assert second.status_code == 429
    assert "retry-after" in second.headers
