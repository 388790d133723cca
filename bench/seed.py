"""Create N items through the API and print the id of the first: `python - N < seed.py`.

Run inside the API container (its image has Python, not curl), against 127.0.0.1:8000.
Only the HTTP API is used, so it works whatever the app's schema becomes.
"""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

URL = "http://127.0.0.1:8000/api/v1/items"
RUN = uuid.uuid4().hex[:8]


def create(number: int) -> str:
    body = json.dumps({"name": f"seed-{RUN}-{number}", "description": "x" * 100}).encode()
    request = urllib.request.Request(  # a fixed http URL
        URL, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return str(json.load(response)["id"])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = list(pool.map(create, range(count)))
    print(ids[0])


if __name__ == "__main__":
    main()
