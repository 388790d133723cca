"""The plan Postgres picks for a query the app sends, shared by the domains' tests
of their indexes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

Plan = dict[str, Any]


async def plan_of_last_statement(
    connection: AsyncConnection, run: Callable[[], Awaitable[object]]
) -> Plan:
    """Run `run`, then EXPLAIN the last statement it sent, with the same parameters.
    Scanning the table and sorting are off for the test's transaction: on a test's few
    rows they win, and the question is whether an index can give the rows in order.
    (On real data, Postgres picks that plan by itself.)"""
    sent: list[tuple[str, Any]] = []

    def record(*args: Any) -> None:
        sent.append((args[2], args[3]))  # the statement and its parameters

    engine = connection.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        await run()
    finally:
        event.remove(engine, "before_cursor_execute", record)
    statement, parameters = sent[-1]
    await connection.execute(text("SET LOCAL enable_seqscan = off"))
    await connection.execute(text("SET LOCAL enable_sort = off"))
    explained = await connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", parameters)
    plan: Plan = explained.scalar_one()[0]["Plan"]  # the JSON comes decoded
    return plan


def nodes(plan: Plan) -> Iterator[Plan]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def assert_read_in_index_order(plan: Plan, index: str) -> None:
    """The rows come off `index` already in order: no sort of any kind above it."""
    assert index in {node.get("Index Name") for node in nodes(plan)}, plan
    assert not [node for node in nodes(plan) if "Sort" in node["Node Type"]], plan
