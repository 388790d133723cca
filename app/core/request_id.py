"""The request id: taken from X-Request-ID when well-formed, generated otherwise."""

from __future__ import annotations

import os
import re
from contextvars import ContextVar

REQUEST_ID_HEADER = "X-Request-ID"

# Letters, digits and a few separators, bounded: safe to log and to echo back.
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)


def accept_or_generate(incoming: str | None) -> str:
    """Keep a well-formed incoming id (so traces join up across services), else make one."""
    if incoming is not None and _WELL_FORMED.fullmatch(incoming):
        return incoming
    # 128 random bits as 32 hex digits: the form of uuid4().hex, for a fraction of its
    # cost (no UUID object to build), and this runs on every request.
    return os.urandom(16).hex()


def set_request_id(request_id: str) -> None:
    _request_id.set(request_id)


def current_request_id() -> str | None:
    """The id of the request being handled in this context, if any."""
    return _request_id.get()
