"""The app as the image serves it, with the orders service's enqueue switched off: the
reference of the "an order with its job >= 0.9 x an order alone" bar (scripts/bench.py).

The swap bench/jobs.py makes for its transaction rows, in a server: an order request
here still runs everything else (its credential, the idempotency route, the insert,
the item's refresh, the commit, the response), and no job is written. Never served
outside the bench (bench/compose.yml mounts it).
"""

from __future__ import annotations

import importlib
from typing import Any
from unittest.mock import patch

from app.main import app


async def skip_enqueue(*_: object, **__: object) -> None:
    """No job: the order alone."""


# By name, as bench/jobs.py imports it: `make init examples=no` removes the orders example.
service: Any = importlib.import_module("app.orders.service")
patch.object(service, "enqueue", skip_enqueue).start()
__all__ = ["app"]
