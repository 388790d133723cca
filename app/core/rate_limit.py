"""Per-caller rate limits kept in Redis, as a dependency factory with named scopes.

    writes = rate_limit("writes")        # budget from the RATE_LIMIT_WRITES setting
    searches = rate_limit("searches", per_minute=30)

Each scope has its own budget and counter per caller: the authenticated principal
(app/core/auth/), or the client address on a route that needs no identity. A fixed
one-minute window (INCR plus EXPIRE, one round trip) is easy to reason about; it lets
a caller burst up to twice the limit across a window boundary, acceptable for writes.
When Redis is unavailable the limit fails open: requests keep working.
"""

from __future__ import annotations

from http import HTTPStatus

from fastapi import Request, params
from redis.asyncio import Redis

from app.core.config import Settings
from app.core.errors import AppError
from app.core.principal import Principal
from app.core.state import RedisDep, SettingsDep

WINDOW_SECONDS = 60


class RateLimited(AppError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests; retry in {retry_after} s.")
        self.headers = {"Retry-After": str(retry_after)}


async def hit(redis: Redis, key: str, limit: int) -> int | None:
    """Count one request against `key`. Returns the seconds to wait if over the limit."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(key)
        # NX: the window starts at its first request and is not extended by later ones.
        pipe.expire(key, WINDOW_SECONDS, nx=True)
        pipe.ttl(key)
        count, _, ttl = await pipe.execute()
    if count > limit:
        return max(int(ttl), 1)
    return None


def client_key(request: Request) -> str:
    # Behind the proxy, uvicorn's proxy-headers support has already set the real client.
    return request.client.host if request.client else "unknown"


def caller_key(request: Request) -> str:
    principal = request.scope.get("auth")  # set by authentication, which runs first
    if isinstance(principal, Principal):
        return f"principal:{principal.subject}"
    return client_key(request)


def rate_limit(scope: str, *, per_minute: int | None = None) -> params.Depends:
    """A dependency limiting each caller to `per_minute` requests in `scope`; 429 with
    Retry-After beyond. Without `per_minute`, the budget is the setting
    `RATE_LIMIT_<SCOPE>` (checked here, at import); 0 turns the limit off."""
    setting = f"rate_limit_{scope}"
    if per_minute is None and setting not in Settings.model_fields:
        raise ValueError(f"rate_limit({scope!r}) needs per_minute= or a {setting} setting")

    async def limit(request: Request, settings: SettingsDep, redis: RedisDep) -> None:
        budget: int = per_minute if per_minute is not None else getattr(settings, setting)
        if budget == 0:
            return
        key = f"ratelimit:{scope}:{caller_key(request)}"
        retry_after = await redis.run(lambda client: hit(client, key, budget))
        if retry_after is not None:
            raise RateLimited(retry_after)

    return params.Depends(limit)
