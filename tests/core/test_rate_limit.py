"""Rate limits: 429 with Retry-After past the budget, per client and per scope, failing open."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.rate_limit import hit, rate_limit
from tests.conftest import UNREACHABLE_REDIS, with_overrides
from tests.core.conftest import CoreClientMaker
from tests.core.problems import assert_problem


async def test_past_the_setting_budget_is_429_with_retry_after(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(with_overrides(settings, rate_limit_writes=3))
    statuses = [(await client.post("/probe/limited")).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    response = await client.post("/probe/limited")
    assert_problem(response, 429)
    assert 1 <= int(response.headers["retry-after"]) <= 60


async def test_scopes_have_their_own_budgets(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(with_overrides(settings, rate_limit_writes=100))
    statuses = [(await client.post("/probe/limited-scope")).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await client.post("/probe/limited")).status_code == 200


async def test_an_authenticated_caller_has_a_budget_of_its_own_whatever_its_address(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    """Two principals behind one address (a NAT, an office): one spending its budget
    leaves the other's whole."""
    limited = with_overrides(settings, rate_limit_writes=1)
    alice = await make_core_client(limited, sub="alice")
    bob = await make_core_client(limited, sub="bob")
    assert (await alice.post("/probe/limited-caller")).status_code == 200
    assert_problem(await alice.post("/probe/limited-caller"), 429)
    assert (await bob.post("/probe/limited-caller")).status_code == 200


async def test_limit_is_per_client(redis: Redis) -> None:
    for _ in range(2):
        assert await hit(redis, "ratelimit:test:a", limit=2) is None
    assert await hit(redis, "ratelimit:test:a", limit=2) is not None
    assert await hit(redis, "ratelimit:test:b", limit=2) is None


async def test_window_is_not_extended_by_later_requests(redis: Redis) -> None:
    await hit(redis, "ratelimit:test:w", limit=10)
    await redis.expire("ratelimit:test:w", 5)  # as if 55 s of the window had passed
    await hit(redis, "ratelimit:test:w", limit=10)
    assert await redis.ttl("ratelimit:test:w") <= 5


async def test_zero_disables_the_limit(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(with_overrides(settings, rate_limit_writes=0))
    for _ in range(5):
        assert (await client.post("/probe/limited")).status_code == 200


async def test_limit_fails_open_when_redis_is_down(
    make_core_client: CoreClientMaker, settings: Settings
) -> None:
    client = await make_core_client(
        with_overrides(settings, rate_limit_writes=1, redis_url=UNREACHABLE_REDIS)
    )
    for _ in range(5):
        assert (await client.post("/probe/limited")).status_code == 200


def test_a_scope_without_budget_is_refused_at_import() -> None:
    with pytest.raises(ValueError, match="rate_limit_nothing"):
        rate_limit("nothing")
