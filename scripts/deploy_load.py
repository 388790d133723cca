#!/usr/bin/env python3
"""Steady load through the proxy while a deploy runs (scripts/deploy-check.sh).

Each client thread holds one keep-alive HTTP/1.1 connection and sends, at a fixed pace,
writes (an item or an order; --writes of them) and reads (an item, or a page). A write
carries an Idempotency-Key and is retried with it after an answer that leaves its outcome
unknown (a connection error, a timeout, 502, 503, 504); any other final answer but the
expected status is a failed request. On SIGTERM or SIGINT (or after --seconds) it checks
that no order was created twice (each order's quantity is unique to the run) and prints
one JSON summary on stdout.

The API key comes from LOAD_API_KEY, not an argument, to stay out of the process list;
it needs items:read items:write orders:read orders:write (docs/auth.md). Standard library
only, so it runs on any host with Python 3.11+:

    LOAD_API_KEY=sak_... python3 scripts/deploy_load.py http://localhost:18090 --clients 8 --rate 80
"""

from __future__ import annotations

import argparse
import functools
import http.client
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

TIMEOUT_SECONDS = 10.0
SEED_ITEMS = 20
# A write whose answer leaves its outcome unknown is sent again, with the same key.
RETRY_AFTER: frozenset[int | str] = frozenset(
    {"timeout", "RemoteDisconnected", "ConnectionResetError", "BrokenPipeError"}
    | {"ConnectionRefusedError", "IncompleteRead", 502, 503, 504}
)
RETRIES = 5
RETRY_PAUSE_SECONDS = 0.2
# Order quantities are 1-10,000; each order of a run gets its own, so a duplicate shows.
MAX_QUANTITY = 10_000


@dataclass
class Tally:
    """What every client saw; one lock, since clients finish requests concurrently."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    retries: int = 0
    replayed: int = 0
    quantities: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    ordered: dict[int, str] = field(default_factory=dict)  # quantity -> item id
    failures: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def record(self, what: str, status: int | str, expected: int, seconds: float) -> None:
        with self.lock:
            self.requests += 1
            self.statuses[f"{what} {status}"] += 1
            self.latencies.append(seconds)
            if status != expected:
                self.failures[f"{what} {status}"] += 1


class Client:
    """One keep-alive connection, reopened after an error, like a browser or an SDK."""

    def __init__(self, host: str, port: int, auth: dict[str, str]) -> None:
        self.host, self.port, self.auth = host, port, auth
        self.connection: http.client.HTTPConnection | None = None

    def send(
        self, method: str, path: str, body: dict[str, object] | None, key: str | None = None
    ) -> tuple[int | str, bool, bytes]:
        """The response's status (or the kind of error that stopped the request), whether
        it was a replay of an earlier attempt with the same key, and its body."""
        if self.connection is None:
            self.connection = http.client.HTTPConnection(
                self.host, self.port, timeout=TIMEOUT_SECONDS
            )
        headers = dict(self.auth)
        if body is not None:
            headers["Content-Type"] = "application/json"
        if key is not None:
            headers["Idempotency-Key"] = key
        try:
            self.connection.request(
                method, path, json.dumps(body) if body is not None else None, headers
            )
            response = self.connection.getresponse()
            payload = response.read()
        except TimeoutError:
            self.close()
            return "timeout", False, b""
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return type(exc).__name__, False, b""
        if response.will_close:
            self.close()
        return response.status, response.getheader("Idempotent-Replayed") == "true", payload

    def fetch(
        self,
        what: str,
        method: str,
        path: str,
        expected: int,
        body: dict[str, object] | None = None,
    ) -> Any:
        """The JSON answer to a request that must succeed; exits, naming `what`, if not."""
        status, _, payload = self.send(method, path, body)
        if status != expected:
            sys.exit(f"{what} failed: {method} {path.split('?', maxsplit=1)[0]} answered {status}")
        return json.loads(payload)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def create_seed_items(client: Client) -> list[str]:
    """Create SEED_ITEMS items and return their ids."""
    return [
        str(client.fetch("seeding", "POST", "/api/v1/items", 201, new_item())["id"])
        for _ in range(SEED_ITEMS)
    ]


def new_item() -> dict[str, object]:
    return {"name": f"load-{uuid.uuid4().hex[:12]}"}


Request = tuple[str, str, str, dict[str, object] | None, int]


def pick_request(rng: random.Random, ids: list[str], writes: float, tally: Tally) -> Request:
    """(label, method, path, JSON body, expected status): a write (an item or an
    order), an item or a page."""
    roll = rng.random()
    if roll < writes / 2:
        return ("create", "POST", "/api/v1/items", new_item(), 201)
    if roll < writes:
        item_id = rng.choice(ids)
        with tally.lock:
            quantity = next(tally.quantities)
            tally.ordered[quantity] = item_id
        if quantity > MAX_QUANTITY:
            sys.exit(f"more than {MAX_QUANTITY} orders: lower --writes or --seconds")
        body = {"item_id": item_id, "quantity": quantity}
        return ("order", "POST", "/api/v1/orders", body, 201)
    if roll < writes + (1 - writes) * 0.75:
        return ("get", "GET", f"/api/v1/items/{rng.choice(ids)}", None, 200)
    return ("list", "GET", "/api/v1/items?limit=10", None, 200)


def run_client(
    client: Client,
    *,
    ids: list[str],
    interval: float,
    writes: float,
    stop: threading.Event,
    tally: Tally,
) -> None:
    rng = random.Random()  # noqa: S311  # picks a request mix, not a secret
    next_at = time.monotonic() + rng.uniform(0, interval)
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        next_at = max(next_at + interval, time.monotonic() - interval)
        what, method, path, body, expected = pick_request(rng, ids, writes, tally)
        key = str(uuid.uuid4()) if method == "POST" else None
        started = time.perf_counter()
        status, replayed, _ = client.send(method, path, body, key)
        for _ in range(RETRIES if key else 0):
            if status not in RETRY_AFTER or stop.wait(RETRY_PAUSE_SECONDS):
                break
            with tally.lock:
                tally.retries += 1
            status, replayed, _ = client.send(method, path, body, key)
        if replayed:
            with tally.lock:
                tally.replayed += 1
        tally.record(what, status, expected, time.perf_counter() - started)
    client.close()


def count_duplicate_orders(client: Client, tally: Tally) -> int:
    """Orders this run created more than once: each was sent with its own quantity."""
    seen: Counter[int] = Counter()
    for item_id in sorted(set(tally.ordered.values())):
        cursor: str | None = ""
        while cursor is not None:
            query = f"item_id={item_id}&limit=100" + (f"&cursor={cursor}" if cursor else "")
            page = client.fetch("counting orders", "GET", f"/api/v1/orders?{query}", 200)
            seen.update(int(order["quantity"]) for order in page["items"])
            cursor = page["next_cursor"]
    return sum(n - 1 for quantity, n in seen.items() if quantity in tally.ordered and n > 1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_url", help="e.g. http://localhost:18090")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--writes", type=float, default=0.1, help="share of requests that POST")
    parser.add_argument("--rate", type=float, default=80.0, help="requests per second, in all")
    parser.add_argument(
        "--seconds", type=float, default=0.0, help="stop after this long (0: on a signal)"
    )
    args = parser.parse_args()
    if not os.environ.get("LOAD_API_KEY"):
        sys.exit("LOAD_API_KEY is not set: every /api/v1 route needs a credential")
    auth = {"X-API-Key": os.environ["LOAD_API_KEY"]}

    url = urlsplit(args.base_url)
    base = (url.hostname or "localhost", url.port or 80)
    with closing(Client(*base, auth)) as client:
        ids = create_seed_items(client)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    signal.signal(signal.SIGINT, lambda _signum, _frame: stop.set())

    tally = Tally()
    interval = args.clients / args.rate
    run = functools.partial(
        run_client, ids=ids, interval=interval, writes=args.writes, stop=stop, tally=tally
    )
    clients = [Client(*base, auth) for _ in range(args.clients)]
    threads = [threading.Thread(target=run, args=(client,), daemon=True) for client in clients]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    print(f"load: {args.clients} clients, {args.rate:g} requests/s", file=sys.stderr, flush=True)
    stop.wait(args.seconds or None)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT_SECONDS + 1)
    seconds = round(time.monotonic() - started, 1)
    with closing(Client(*base, auth)) as client:
        duplicates = count_duplicate_orders(client, tally)

    summary = {
        "seconds": seconds,
        "requests": tally.requests,
        "retries": tally.retries,
        "replayed": tally.replayed,
        "duplicates": duplicates,
        "failed": sum(tally.failures.values()),
        "failures": dict(tally.failures),
        "statuses": dict(sorted(tally.statuses.items())),
        "latency_ms": {
            "p50": round(percentile(tally.latencies, 0.5) * 1000, 1),
            "p99": round(percentile(tally.latencies, 0.99) * 1000, 1),
            "max": round(max(tally.latencies, default=0.0) * 1000, 1),
        },
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
