"""The page's ceiling: the first page of items from asyncpg straight to orjson, no framework.

`make bench` serves it with the same image, gunicorn_conf.py, worker count and pool
size as the real app, on the same seeded table. It answers every request with the
body `GET /api/v1/items?limit=20` gives: the same query (a prepared statement on a
pooled connection), the same JSON and the same next cursor. What it leaves out is
everything a service needs around that: routing, validation, the session and its
error handling, the request id, the access line. So its row is the most a Python
server on this machine can serve of this page, and the app's page row against it is
what the framework and the template's plumbing cost.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import asyncpg
import orjson

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

PAGE_SIZE = 20
# The statement the app's Paginator runs for a first page (app/core/pagination.py).
FIRST_PAGE = (
    "SELECT id, name, description, created_at, updated_at FROM items "
    "ORDER BY created_at, id LIMIT $1"
)
HEADERS = [(b"content-type", b"application/json")]

_pools: list[asyncpg.Pool] = []


def _item(record: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": str(record["id"]),
        "name": record["name"],
        "description": record["description"],
        "created_at": record["created_at"],
        "updated_at": record["updated_at"],
    }


def _cursor(record: asyncpg.Record) -> str:
    # As app.core.pagination.encode_cursor writes it.
    plain = orjson.dumps([str(record["created_at"]), str(record["id"])])
    return base64.urlsafe_b64encode(plain).decode().rstrip("=")


async def _page() -> bytes:
    async with _pools[0].acquire() as connection:
        records = await connection.fetch(FIRST_PAGE, PAGE_SIZE + 1)
    items = records[:PAGE_SIZE]
    cursor = _cursor(items[-1]) if len(records) > PAGE_SIZE else None
    return orjson.dumps(
        {"items": [_item(record) for record in items], "next_cursor": cursor},
        option=orjson.OPT_UTC_Z,
    )


async def _lifespan(
    receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            size = int(os.environ.get("DB_POOL_SIZE", "10"))  # the app's default
            dsn = os.environ["DATABASE_URL"]
            _pools.append(await asyncpg.create_pool(dsn, min_size=size, max_size=size))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await _pools.pop().close()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    body = await _page()
    headers = [*HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})
