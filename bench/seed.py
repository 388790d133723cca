"""`python - N KEY < seed.py` in the app's container (Python, no curl): N items created
through the HTTP API, whatever the app's schema becomes, with KEY (items:write); prints
their ids, one a line.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

BASE = "http://127.0.0.1:8000"
RUN = uuid.uuid4().hex[:8]


def call(request: urllib.request.Request, attempts: int = 30) -> bytes:
    """The response body; retried while the app answers 5xx or not at all (still starting)."""
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return bytes(response.read())
    except OSError as exc:  # HTTPError too: below 500, the request itself is wrong
        if attempts == 1 or getattr(exc, "code", 500) < 500:
            raise
    time.sleep(1)
    return call(request, attempts - 1)


def create(number: int) -> str:
    body = json.dumps({"name": f"seed-{RUN}-{number}", "description": "x" * 100}).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": sys.argv[2]}
    request = urllib.request.Request(f"{BASE}/api/v1/items", body, headers, method="POST")  # noqa: S310
    return str(json.loads(call(request))["id"])


if __name__ == "__main__":
    call(urllib.request.Request(f"{BASE}/health/ready"))  # noqa: S310  # Postgres and Redis answer
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(create, range(int(sys.argv[1]))))
    print("\n".join(ids))
