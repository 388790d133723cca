"""Idempotency-Key on POSTs (app/core/idempotency.py), on core's test-only route."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends
from httpx import AsyncClient
from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from app.core.auth.dependencies import authenticate, requires
from app.core.config import Settings
from app.core.idempotency import (
    EXPIRED_KEYS,
    HEADER,
    REPLAYED_HEADER,
    IdempotencyKey,
    IdempotentRoute,
    idempotent,
)
from app.core.jobs.cleanup import delete_in_batches
from app.core.principal import ANONYMOUS_SUBJECT_PREFIX, Principal
from tests.conftest import with_overrides
from tests.core.conftest import CoreClientMaker, ProbeBase, Widget
from tests.core.problems import assert_problem

pytestmark = pytest.mark.usefixtures("widgets_table")
# The test client's address (httpx's ASGITransport), on a public route.
ANONYMOUS = f"{ANONYMOUS_SUBJECT_PREFIX}127.0.0.1"
KEYED = "/probe/keyed-widgets"


def widget(name: str = "anvil") -> dict[str, str]:
    return {"id": str(uuid.uuid4()), "name": name}


async def count_widgets(connection: AsyncConnection) -> int:
    return int(await connection.scalar(select(func.count()).select_from(Widget)) or 0)


async def test_a_retry_gets_the_first_response_and_writes_nothing(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    body = widget()
    first = await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-1"})
    again = await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-1"})

    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["content-type"] == "application/json"
    assert again.headers[REPLAYED_HEADER] == "true"
    assert REPLAYED_HEADER not in first.headers
    assert await count_widgets(connection) == 1


async def test_callers_without_an_identity_have_keys_per_address(
    make_core_client: CoreClientMaker, settings: Settings, connection: AsyncConnection
) -> None:
    """On a public route, another address's retry of the same key and body is its own
    request: it gets no one else's response, nor a 422 saying the key is in use."""
    first = await make_core_client(settings)
    other = await make_core_client(settings, address="10.0.0.9")
    assert (await first.post(KEYED, json=widget(), headers={HEADER: "k-a"})).status_code == 201
    second = await other.post(KEYED, json=widget("b"), headers={HEADER: "k-a"})
    assert second.status_code == 201
    assert REPLAYED_HEADER not in second.headers
    assert await count_widgets(connection) == 2


async def test_a_caller_refused_by_a_dependency_gets_no_replay(
    make_core_client: CoreClientMaker, settings: Settings, connection: AsyncConnection
) -> None:
    """Authorization is decided on every attempt: a token of the same subject without the
    scope gets 403 for a key that subject used, not the stored response (nor the 422
    that would tell it the key was used)."""
    writer = await make_core_client(settings, sub="alice")
    reader = await make_core_client(settings, scopes="widgets:read", sub="alice")
    body = widget()
    first = await writer.post("/probe/scoped-widgets", json=body, headers={HEADER: "k-s"})
    assert first.status_code == 201

    for sent in (body, widget("other")):
        refused = await reader.post("/probe/scoped-widgets", json=sent, headers={HEADER: "k-s"})
        assert_problem(refused, 403)
        assert REPLAYED_HEADER not in refused.headers
    assert await count_widgets(connection) == 1


async def test_two_keys_on_one_request_are_refused(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    headers = [(HEADER, "k-two-a"), (HEADER, "k-two-b")]
    refused = await core_client.post("/probe/keyed-widgets", json=widget(), headers=headers)
    assert_problem(refused, 422)
    assert await count_widgets(connection) == 0


async def test_the_key_may_be_sent_as_a_structured_field_string(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    body = widget()
    await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-2"})
    again = await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: '"k-2"'})

    assert again.headers[REPLAYED_HEADER] == "true"
    assert await count_widgets(connection) == 1


async def test_the_same_key_with_another_body_is_refused(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    await core_client.post("/probe/keyed-widgets", json=widget("a"), headers={HEADER: "k-3"})
    other = await core_client.post(
        "/probe/keyed-widgets", json=widget("b"), headers={HEADER: "k-3"}
    )

    assert other.status_code == 422
    assert other.headers["content-type"] == "application/problem+json"
    assert HEADER in other.json()["detail"]
    assert await count_widgets(connection) == 1


async def test_the_same_key_and_body_on_another_query_string_is_refused(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    """The query string is part of the request (`?dry_run=true`, a version): a retry
    sends the same one, so another is another request under the same key."""
    body = widget()
    first = await core_client.post(KEYED, json=body, params={"x": "1"}, headers={HEADER: "k-q"})
    assert first.status_code == 201
    assert_problem(await core_client.post(KEYED, json=body, headers={HEADER: "k-q"}), 422)
    assert await count_widgets(connection) == 1


async def test_each_principal_has_its_own_keys(
    make_core_client: CoreClientMaker, settings: Settings, connection: AsyncConnection
) -> None:
    """Two subjects behind one address using the same key: each its own request, neither
    replaying nor refused by the other's."""
    alice = await make_core_client(settings, sub="alice")
    bob = await make_core_client(settings, sub="bob")
    scoped = "/probe/scoped-widgets"
    assert (await alice.post(scoped, json=widget("a"), headers={HEADER: "k-p"})).status_code == 201
    theirs = await bob.post(scoped, json=widget("b"), headers={HEADER: "k-p"})
    assert theirs.status_code == 201
    assert REPLAYED_HEADER not in theirs.headers
    assert await count_widgets(connection) == 2


async def test_the_same_json_in_other_bytes_is_another_body(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    """The fingerprint is of the bytes sent (docs say so): a retry resends its own bytes,
    and a body parsed and written again, with other spacing, is another request."""
    compact = json.dumps(widget("c"), separators=(",", ":"))
    spaced = json.dumps(widget("c"), indent=2)
    headers = {HEADER: "k-bytes", "Content-Type": "application/json"}
    await core_client.post("/probe/keyed-widgets", content=compact, headers=headers)
    same = await core_client.post("/probe/keyed-widgets", content=compact, headers=headers)
    other = await core_client.post("/probe/keyed-widgets", content=spaced, headers=headers)

    assert same.headers[REPLAYED_HEADER] == "true"
    assert_problem(other, 422)
    assert await count_widgets(connection) == 1


async def test_a_retry_whose_handler_succeeds_again_keeps_none_of_it(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    body, fresh = widget(), {"fresh": "true"}
    first = await core_client.post(
        "/probe/keyed-widgets", params=fresh, json=body, headers={HEADER: "k-f"}
    )
    again = await core_client.post(
        "/probe/keyed-widgets", params=fresh, json=body, headers={HEADER: "k-f"}
    )

    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    assert again.headers[REPLAYED_HEADER] == "true"
    assert await count_widgets(connection) == 1


async def test_an_expired_keys_retry_gets_its_own_outcome(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    body = widget()
    await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-e"})
    await connection.execute(
        update(IdempotencyKey).values(created_at=func.now() - text("interval '2 days'"))
    )
    # The expired response is not replayed: the retry hits the name its first attempt wrote.
    again = await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-e"})

    assert again.status_code == 409
    assert REPLAYED_HEADER not in again.headers


async def test_without_a_key_nothing_changes(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    body = widget()
    assert (await core_client.post("/probe/keyed-widgets", json=body)).status_code == 201
    # Without a key a retry is a new request: here it hits the unique name.
    assert (await core_client.post("/probe/keyed-widgets", json=body)).status_code == 409
    stored = await connection.scalar(select(func.count()).select_from(IdempotencyKey))
    assert stored == 0


async def test_a_failed_request_stores_nothing_and_its_retry_runs_again(
    core_client: AsyncClient, connection: AsyncConnection
) -> None:
    body = widget()
    failed = await core_client.post(
        "/probe/keyed-widgets", params={"fail": "true"}, json=body, headers={HEADER: "k-4"}
    )
    assert failed.status_code == 418
    assert await count_widgets(connection) == 0
    assert await connection.scalar(select(func.count()).select_from(IdempotencyKey)) == 0

    # The same key on the same request (the query differs, so a new fingerprint
    # would not matter: the failed claim is gone with its rollback).
    retried = await core_client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-4"})
    assert retried.status_code == 201
    assert REPLAYED_HEADER not in retried.headers
    assert await count_widgets(connection) == 1


@pytest.mark.parametrize("key", ["", "caf\u00e9", "tab\there", "x" * 256])
async def test_a_malformed_key_is_refused(core_client: AsyncClient, key: str) -> None:
    response = await core_client.post(
        "/probe/keyed-widgets", json=widget(), headers={HEADER.encode(): key.encode()}
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


async def test_an_expired_key_is_claimed_afresh(
    core_client: AsyncClient, connection: AsyncConnection, settings: Settings
) -> None:
    await core_client.post("/probe/keyed-widgets", json=widget("old"), headers={HEADER: "k-5"})
    await connection.execute(
        update(IdempotencyKey).values(created_at=func.now() - text("interval '2 days'"))
    )
    fresh = await core_client.post(
        "/probe/keyed-widgets", json=widget("new"), headers={HEADER: "k-5"}
    )

    assert fresh.status_code == 201
    assert REPLAYED_HEADER not in fresh.headers
    assert fresh.json()["name"] == "new"
    assert await count_widgets(connection) == 2
    assert settings.idempotency_key_ttl_seconds == 24 * 60 * 60


async def test_expired_keys_are_deleted(
    core_client: AsyncClient,
    connection: AsyncConnection,
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    for key in ("old", "new"):
        await core_client.post("/probe/keyed-widgets", json=widget(key), headers={HEADER: key})
    await connection.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.key == "old")
        .values(created_at=func.now() - text("interval '2 days'"))
    )
    cutoff = datetime.now(UTC) - timedelta(days=1)
    deadline = time.monotonic() + 10
    assert await delete_in_batches(session_factory, EXPIRED_KEYS, cutoff, deadline) == (1, True)
    remaining = (await connection.scalars(select(IdempotencyKey.key))).all()
    assert remaining == ["new"]


async def test_the_ttl_setting_is_read(
    make_core_client: CoreClientMaker, settings: Settings, connection: AsyncConnection
) -> None:
    client = await make_core_client(with_overrides(settings, idempotency_key_ttl_seconds=1))
    await client.post("/probe/keyed-widgets", json=widget("a"), headers={HEADER: "k-6"})
    await connection.execute(
        update(IdempotencyKey).values(created_at=func.now() - text("interval '2 seconds'"))
    )
    again = await client.post("/probe/keyed-widgets", json=widget("b"), headers={HEADER: "k-6"})
    assert again.status_code == 201
    assert REPLAYED_HEADER not in again.headers


async def test_the_header_is_documented(core_client: AsyncClient) -> None:
    operation = (await core_client.get("/openapi.json")).json()["paths"]["/probe/keyed-widgets"][
        "post"
    ]
    assert any(p["name"] == HEADER and p["in"] == "header" for p in operation["parameters"])


@pytest.fixture
async def committed_widgets(engine: AsyncEngine) -> AsyncIterator[None]:
    """The widgets table committed, for apps on their own engine (real concurrent
    transactions); dropped afterwards, with the keys the test stored."""
    async with engine.begin() as connection:
        await connection.run_sync(ProbeBase.metadata.create_all)
    yield
    async with engine.begin() as connection:
        await connection.run_sync(ProbeBase.metadata.drop_all)
        await connection.execute(delete(IdempotencyKey))


def patient(settings: Settings) -> Settings:
    """Timeouts no busy machine reaches: five fresh connections, or the first write, can
    take longer than the 1 s defaults there (a 503, or the 409 of a wait on the key),
    and the tests below prove writing once, not the timeouts (tested elsewhere)."""
    return with_overrides(
        settings,
        db_connect_timeout=10,
        db_pool_timeout=10,
        db_lock_timeout=10,
        db_statement_timeout=12,
    )


@pytest.mark.usefixtures("committed_widgets")
async def test_concurrent_duplicates_write_once(
    make_core_client: CoreClientMaker, settings: Settings, engine: AsyncEngine
) -> None:
    client = await make_core_client(patient(settings), isolated=False)
    body = widget()
    responses = await asyncio.gather(
        *(client.post("/probe/keyed-widgets", json=body, headers={HEADER: "k-c"}) for _ in range(5))
    )

    assert [r.status_code for r in responses] == [201] * 5
    assert len({r.content for r in responses}) == 1
    assert sum(REPLAYED_HEADER not in r.headers for r in responses) == 1
    async with engine.connect() as connection:
        assert await count_widgets(connection) == 1


@pytest.mark.usefixtures("committed_widgets")
async def test_concurrent_duplicates_whose_handlers_all_succeed_write_once(
    make_core_client: CoreClientMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """Nothing in the handler's write conflicts: the key's own insert does, and every
    request but the first is rolled back."""
    client = await make_core_client(patient(settings), isolated=False)
    body, fresh, key = widget(), {"fresh": "true"}, {HEADER: "k-cf"}
    responses = await asyncio.gather(
        *(
            client.post("/probe/keyed-widgets", params=fresh, json=body, headers=key)
            for _ in range(5)
        )
    )

    assert [r.status_code for r in responses] == [201] * 5
    assert len({r.content for r in responses}) == 1
    assert sum(REPLAYED_HEADER not in r.headers for r in responses) == 1
    async with engine.connect() as connection:
        assert await count_widgets(connection) == 1


@pytest.mark.usefixtures("committed_widgets")
async def test_a_retry_while_the_first_still_runs_gets_409(
    make_core_client: CoreClientMaker, settings: Settings, engine: AsyncEngine
) -> None:
    client = await make_core_client(with_overrides(settings, db_lock_timeout=0.2), isolated=False)
    async with engine.connect() as first:
        # The first attempt's claim, its transaction still open.
        await first.execute(
            insert(IdempotencyKey).values(principal=ANONYMOUS, key="k-busy", fingerprint="0" * 64)
        )
        retry = await client.post("/probe/keyed-widgets", json=widget(), headers={HEADER: "k-busy"})
        await first.rollback()

    assert retry.status_code == 409
    assert retry.headers["retry-after"] == "1"
    async with engine.connect() as connection:
        assert await count_widgets(connection) == 0


@pytest.mark.usefixtures("committed_widgets")
async def test_a_store_cut_short_by_a_cancel_is_a_503_not_a_409(
    make_core_client: CoreClientMaker, settings: Settings, engine: AsyncEngine
) -> None:
    """Only a lock timeout says another request holds the key: a store cancelled (here by
    the statement timeout; pg_cancel_backend under load alike) is a 503, and a client
    that retries on 503 with its key gets its answer."""
    client = await make_core_client(
        with_overrides(settings, db_lock_timeout=5, db_statement_timeout=0.2), isolated=False
    )
    async with engine.connect() as first:
        await first.execute(
            insert(IdempotencyKey).values(principal=ANONYMOUS, key="k-slow", fingerprint="0" * 64)
        )
        retry = await client.post("/probe/keyed-widgets", json=widget(), headers={HEADER: "k-slow"})
        await first.rollback()

    assert_problem(retry, 503)
    assert retry.headers["retry-after"]
    async with engine.connect() as connection:
        assert await count_widgets(connection) == 0


def test_a_route_that_reads_the_key_before_it_authenticates_is_found() -> None:
    """Filed as anonymous, the key would let another caller from the same address replay
    this caller's response (_read_key refuses such a route's keys with a 500)."""
    router = APIRouter(route_class=IdempotentRoute)

    async def create(_: Annotated[Principal, requires("widgets:write")]) -> None:
        pass

    router.post("/late", dependencies=[idempotent])(create)
    router.post("/first", dependencies=[requires("widgets:write"), idempotent])(create)
    late, first = router.routes
    assert isinstance(late, IdempotentRoute)
    assert isinstance(first, IdempotentRoute)
    assert late.keyed_before_authentication
    assert not first.keyed_before_authentication
    # Served under /api/v1, authentication comes first: the same route is sound there.
    api = APIRouter()
    api.include_router(router, dependencies=[Depends(authenticate)])
    assert not any(getattr(r, "keyed_before_authentication", False) for r in api.routes)
