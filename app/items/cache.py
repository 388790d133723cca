"""The items cache: response bodies of GET /items/{id}, one TTL for the resource."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from app.core.cache import ModelCache, model_cache_provider
from app.items.schemas import ItemRead

ItemCache = ModelCache[ItemRead]

get_item_cache = model_cache_provider("items", ItemRead)

ItemCacheDep = Annotated[ItemCache, Depends(get_item_cache)]
