"""The items cache: response bodies of GET /items/{id}, one TTL for the resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.cache import ModelCache
from app.core.state import NearCacheDep, RedisDep, SettingsDep
from app.items.schemas import ItemRead

ItemCache = ModelCache[ItemRead]


async def get_item_cache(redis: RedisDep, near: NearCacheDep, settings: SettingsDep) -> ItemCache:
    return ModelCache(
        redis,
        resource="items",
        model=ItemRead,
        ttl_seconds=settings.cache_ttl_seconds,
        near=near,
    )


ItemCacheDep = Annotated[ItemCache, Depends(get_item_cache)]
