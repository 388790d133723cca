"""Bodies over MAX_BODY_SIZE are refused with 413 before they are read whole."""

from __future__ import annotations

from collections.abc import AsyncIterator

from app.core.config import Settings
from tests.conftest import with_overrides
from tests.core.conftest import CoreClientMaker
from tests.core.problems import assert_problem

LIMIT = 1024


async def test_declared_length_over_the_limit_is_413(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(with_overrides(settings, max_body_size=LIMIT))
    response = await client.post("/probe/echo", content=b"x" * (LIMIT + 1))
    assert_problem(response, 413)


async def test_streamed_body_over_the_limit_is_413(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(with_overrides(settings, max_body_size=LIMIT))
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(1000):
            sent += 512
            yield b"x" * 512

    response = await client.post(
        "/probe/echo", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_problem(response, 413)
    # Refused once past the limit, not after the whole 500 KiB stream was read.
    assert sent <= LIMIT + 2 * 512


async def test_bodies_within_the_limit_pass(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(with_overrides(settings, max_body_size=LIMIT))
    thing = {"id": "00000000-0000-0000-0000-000000000001", "name": "ok"}
    assert (await client.post("/probe/echo", json=thing)).json() == thing
