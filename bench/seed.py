"""Create N items through the API and print the id of the first: `python - N KEY < seed.py`,
KEY an API key with items:write (every /api/v1 route needs one; docs/auth.md).

Run inside the API container (its image has Python, not curl), against 127.0.0.1:8000.
Only the HTTP API is used, so it works whatever the app's schema becomes.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

BASE = "http://127.0.0.1:8000"
RUN = uuid.uuid4().hex[:8]
ATTEMPTS = 30
API_KEY = sys.argv[2] if len(sys.argv) > 2 else ""


def call(request: urllib.request.Request) -> bytes:
    """The response body; retried while the app answers 5xx or not at all (still starting)."""
    for _ in range(ATTEMPTS - 1):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise
        except OSError:
            pass
        time.sleep(1)
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return bytes(response.read())


def create(number: int) -> str:
    body = json.dumps({"name": f"seed-{RUN}-{number}", "description": "x" * 100}).encode()
    headers = {"Content-Type": "application/json", "X-API-Key": API_KEY}
    request = urllib.request.Request(  # noqa: S310  # a fixed http URL
        f"{BASE}/api/v1/items", body, headers, method="POST"
    )
    return str(json.loads(call(request))["id"])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    call(urllib.request.Request(f"{BASE}/health/ready"))  # noqa: S310  # Postgres and Redis answer
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(create, range(count)))
    print(ids[0])


if __name__ == "__main__":
    main()
