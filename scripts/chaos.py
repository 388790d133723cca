#!/usr/bin/env python3
"""Fault injection on the production stack (`make chaos`): does the service keep serving?

Starts docker-compose.prod.yml, with the development issuer of deploy/issuer-check.yml, as
a Compose project of its own with throw-away secrets; drives steady load through the proxy;
and injects each fault in turn, between a steady phase before and one after. Each fault's
figures are checked against its bar (docs/chaos.md's "The bars", encoded in FAULTS below), and the
stack is torn down whatever happens. Exit status 1 when a fault misses its bar.

    python3 scripts/chaos.py                      # every fault
    python3 scripts/chaos.py redis-stop pg-stop   # some of them
    python3 scripts/chaos.py --short              # shorter phases (CI)
    python3 scripts/chaos.py --list               # the faults and their bars

Standard library only (Python 3.11+): besides Docker with Compose v2, nothing to install.
See docs/chaos.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict, Unpack

ROOT = Path(__file__).resolve().parent.parent

# The stack's own names, ports and subnet, apart from `make prod-up` and `make e2e`.
PROJECT = os.environ.get("CHAOS_PROJECT", "fschaos")
HTTP_PORT = int(os.environ.get("CHAOS_HTTP_PORT", "18180"))
HTTPS_PORT = int(os.environ.get("CHAOS_HTTPS_PORT", "18543"))
SUBNET = os.environ.get("CHAOS_SUBNET", "172.30.252.0/24")
PROXY_IP = os.environ.get("CHAOS_PROXY_IP", "172.30.252.10")
API_IMAGE = f"{os.environ.get('SERVICE_NAME', 'app')}:chaos"  # make: pyproject.toml's name
# The development issuer, as deploy/issuer-check.yml runs it: the bearer-token faults need it.
ISSUER_OVERRIDE = "deploy/issuer-check.yml"
ISSUER_SCRIPT = "/issuer/dev_issuer.py"
ISSUER_URL = "https://issuer:8443"
ISSUER_AUDIENCE = "issuer-check"

CLIENTS = 16
CLIENT_TIMEOUT = 5.0
ITEMS = 50
# The statuses of requests without a whole HTTP answer.
TIMEOUT = 0  # no answer within CLIENT_TIMEOUT
FAILED = -1  # the connection was refused, reset or closed
CUT_SHORT = -2  # the head arrived, then the body was cut off
FAILED_PAUSE = 0.1  # a client's wait after FAILED: a refused connection must not busy-loop


def stack_settings(extra: dict[str, str]) -> dict[str, str]:
    """Throw-away secrets; the write rate limit off, since one client (this script) sends
    every write and the limit is per client; few job retries and a short heartbeat timeout,
    so that the jobs fault's poison job fails, and a killed worker's jobs run again, within
    the fault. `extra` (--set NAME=VALUE) may change the last two and add app settings."""
    return {
        "JOBS_MAX_ATTEMPTS": "3",
        "JOBS_HEARTBEAT_TIMEOUT": "10",
        **extra,
        "DOMAIN": "http://localhost",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "APP_DB_PASSWORD": secrets.token_hex(16),
        "REDIS_PASSWORD": secrets.token_hex(16),
        "HTTP_PORT": str(HTTP_PORT),
        "HTTPS_PORT": str(HTTPS_PORT),
        "EDGE_SUBNET": SUBNET,
        "PROXY_IP": PROXY_IP,
        "API_IMAGE": API_IMAGE,
        "RATE_LIMIT_WRITES": "0",
    }


Request = tuple[str, str, bytes | None]  # method, path, JSON body


# --- The load generator --------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    start: float  # seconds since the load began
    latency: float
    status: int  # an HTTP status, TIMEOUT, FAILED or CUT_SHORT
    retry_after: bool = False

    @property
    def end(self) -> float:
        return self.start + self.latency


class CutShortError(Exception):
    """The response began (status and headers arrived) and then its connection broke."""


class StaleConnectionError(Exception):
    """A kept-alive connection closed before a single byte of the response: the server
    closed it as idle just as the request went out, and never read the request."""


# What HTTP clients (Go's net/http, urllib3, browsers) send again, once, on a new connection
# after StaleConnectionError: nothing was answered, and these are safe to repeat.
RESENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Connection:
    """One keep-alive HTTP/1.1 connection to the proxy, reopened after any error."""

    def __init__(self) -> None:
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.resent = 0  # requests sent again after StaleConnectionError
        self.reused = False  # whether the last request went on a kept-alive connection
        self.failures: Counter[str] = Counter()  # why requests failed (see send)

    async def request(
        self, method: str, path: str, body: bytes | None, headers: str
    ) -> tuple[int, dict[str, str], bytes]:
        reused = self.reused = self._streams is not None
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", HTTP_PORT)
        reader, writer = self._streams
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost:{HTTP_PORT}\r\n{headers}"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        try:
            writer.write(head.encode() + b"\r\n" + (body or b""))
            await writer.drain()
            raw_head = await reader.readuntil(b"\r\n\r\n")
        except (OSError, asyncio.IncompleteReadError) as exc:
            nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if reused and nothing and method in RESENT_METHODS:
                raise StaleConnectionError from exc
            raise
        status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        answer_headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            answer_headers[name.strip().lower()] = value.strip()
        try:
            if answer_headers.get("transfer-encoding", "").lower() == "chunked":
                content = await read_chunked(reader)
            else:
                content = await reader.readexactly(int(answer_headers.get("content-length", "0")))
        except (OSError, EOFError, ValueError) as exc:
            raise CutShortError from exc
        if answer_headers.get("connection", "").lower() == "close":
            self.close()
        return status, answer_headers, content

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    content = b""
    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
        content += (await reader.readexactly(size + 2))[:-2]
    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
        pass
    return content


async def send(
    conn: Connection, request: Request, headers: str = ""
) -> tuple[int, dict[str, str], bytes]:
    """One request within CLIENT_TIMEOUT, with `headers` (a credential: every /api/v1 route
    needs one); (TIMEOUT, CUT_SHORT or FAILED, {}, b"") instead of raising. A safe request
    that found its kept-alive connection closed unanswered is sent again, once, on a new
    connection."""
    try:
        try:
            return await asyncio.wait_for(conn.request(*request, headers), CLIENT_TIMEOUT)
        except StaleConnectionError:
            conn.close()
            conn.resent += 1
            return await asyncio.wait_for(conn.request(*request, headers), CLIENT_TIMEOUT)
    except TimeoutError:
        conn.close()
        return TIMEOUT, {}, b""
    except CutShortError:
        conn.close()
        return CUT_SHORT, {}, b""
    except (
        OSError,
        EOFError,
        ValueError,
        IndexError,
        StaleConnectionError,
    ) as exc:  # refused, reset
        conn.failures[
            f"{type(exc).__name__} ({'kept-alive' if conn.reused else 'new'} connection)"
        ] += 1
        conn.close()
        await asyncio.sleep(FAILED_PAUSE)
        return FAILED, {}, b""


@dataclass
class Load:
    """CLIENTS closed-loop clients, each sending its next request when the last is answered.
    `headers` is asked for each request's credential, which a fault may change mid-run (a
    token signed by a rotated key); `answered`, if given, is told each answer's status and
    body (the jobs fault keeps the ids of the orders it created)."""

    next_request: Callable[[], Request]
    headers: Callable[[], str]
    answered: Callable[[int, bytes], None] | None = None
    samples: list[Sample] = field(default_factory=list)
    resent: int = 0  # requests sent again on a new connection (see send)
    failures: Counter[str] = field(default_factory=Counter)  # why requests failed
    t0: float = field(default_factory=time.monotonic)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _client(self) -> None:
        conn = Connection()
        while not self._stop.is_set():
            start = self.now()
            status, headers, body = await send(conn, self.next_request(), self.headers())
            self.samples.append(Sample(start, self.now() - start, status, "retry-after" in headers))
            if self.answered is not None:
                self.answered(status, body)
        conn.close()
        self.resent += conn.resent
        self.failures += conn.failures

    async def run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(CLIENTS)))

    def stop(self) -> None:
        self._stop.set()


class KeyedWriter:
    """A client beside the load, through every fault: it creates orders, each with an
    Idempotency-Key, and sends a write again with its key until the answer is definite
    (a lost connection, a timeout, 502, 503 or 504 leave the outcome unknown). Each order
    gets a quantity of its own, so that one written twice shows when they are counted."""

    UNKNOWN = frozenset({TIMEOUT, FAILED, CUT_SHORT, 502, 503, 504})
    PAUSE = 0.1  # between orders: a trickle, not a share of the load that the bars measure
    RETRY_PAUSE = 0.25
    GIVE_UP_AFTER = 60.0  # per order; a fault's outage is far shorter
    MAX_QUANTITY = 10_000  # the API's limit on an order's quantity

    def __init__(self, item_id: str, credential: str) -> None:
        self.conn = Connection()
        self.item_id = item_id
        self.credential = credential
        self.sent = self.retried = self.replayed = 0
        self.acknowledged: set[int] = set()
        self.unknown: list[int] = []  # gave up without a definite answer
        self.refused: Counter[int] = Counter()  # definite answers other than 201
        self._stop = asyncio.Event()

    async def _order(self, quantity: int) -> None:
        body = json.dumps({"item_id": self.item_id, "quantity": quantity}).encode()
        request: Request = ("POST", "/api/v1/orders", body)
        headers = f"{self.credential}Idempotency-Key: chaos-{self.item_id}-{quantity}\r\n"
        deadline = time.monotonic() + self.GIVE_UP_AFTER
        status, answer, _ = await send(self.conn, request, headers)
        while status in self.UNKNOWN:
            if time.monotonic() > deadline:
                self.unknown.append(quantity)
                return
            self.retried += 1
            await asyncio.sleep(self.RETRY_PAUSE)
            status, answer, _ = await send(self.conn, request, headers)
        self.replayed += answer.get("idempotent-replayed") == "true"
        if status == 201:
            self.acknowledged.add(quantity)
        else:
            self.refused[status] += 1

    async def run(self) -> None:
        for quantity in range(1, self.MAX_QUANTITY + 1):
            if self._stop.is_set():
                break
            self.sent += 1
            await self._order(quantity)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.PAUSE)
        self.conn.close()

    def stop(self) -> None:
        self._stop.set()

    def check(self, stack: Stack) -> list[str]:
        """Each quantity among the API's orders for the writer's item once, and every
        acknowledged one present; what is wrong, if anything."""
        seen: Counter[int] = Counter()
        cursor: str | None = ""
        while cursor is not None:
            page = stack.http("GET", f"/api/v1/orders?item_id={self.item_id}&limit=100{cursor}")
            seen.update(int(order["quantity"]) for order in page["items"])
            cursor = f"&cursor={page['next_cursor']}" if page["next_cursor"] else None
        duplicates = sum(n - 1 for n in seen.values() if n > 1)
        lost = sorted(self.acknowledged - set(seen))
        log(
            f"keyed writes: {self.sent} orders, {self.retried} sends again with their key "
            f"({self.replayed} answered by a replay), {duplicates} written twice, "
            f"{len(lost)} acknowledged but missing, {len(self.unknown)} without a definite "
            f"answer, refused: {dict(self.refused) or 'none'}"
        )
        problems = []
        if duplicates:
            problems.append(f"{duplicates} orders written twice")
        if lost:
            problems.append(f"acknowledged orders missing: {lost[:10]}")
        if self.unknown:
            problems.append(f"orders without a definite answer after {self.GIVE_UP_AFTER:.0f} s")
        if self.refused:
            problems.append(f"orders refused: {dict(self.refused)}")
        return problems


# --- The stack -----------------------------------------------------------------------


class RunOptions(TypedDict, total=False):
    """Stack.run's options, which compose and exec pass on."""

    timeout: float
    check: bool
    stdin: str | None


# The command, run in each service, that succeeds once the service is back for its clients.
# redis-cli exits 0 on an error reply too (NOAUTH): only a PONG counts. It authenticates
# with the container's REDISCLI_AUTH.
READY_COMMANDS = {
    "db": ("pg_isready", "-d", "app"),
    "redis": ("sh", "-c", "redis-cli ping | grep -x PONG"),
}


class Stack:
    """docker-compose.prod.yml as project PROJECT. Its settings are in an env file of its
    own (ENV_FILE) and exported too, so that scripts/deploy.sh, run from here, sees them."""

    def __init__(self, workdir: Path, extra_settings: dict[str, str]) -> None:
        settings = stack_settings(extra_settings)
        env_file = workdir / "chaos.env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
        self.env = {
            **os.environ,
            **settings,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_FILE": f"{ROOT / 'docker-compose.prod.yml'}:{ROOT / ISSUER_OVERRIDE}",
            "ENV_FILE": str(env_file),
        }
        # A compose file may not pass every setting through to the api (env_file): an
        # override sets them in each api service.
        self.api_services = [
            s for s in self.compose("config", "--services").split() if s.startswith("api")
        ]
        api_settings = {"RATE_LIMIT_WRITES": "0", **extra_settings}
        environment = "".join(f"      {name}: '{value}'\n" for name, value in api_settings.items())
        override = workdir / "chaos.override.yml"
        override.write_text(
            "services:\n"
            + "".join(f"  {s}:\n    environment:\n{environment}" for s in self.api_services)
        )
        self.env["COMPOSE_FILE"] += f":{override}"
        self.api_key = ""  # made once the stack is up (create_api_key)
        self.token = ""  # a bearer token from the stack's issuer (issue_token)
        self.items: list[str] = []
        self.write_problems: list[str] = []  # what KeyedWriter.check found
        self.holder: subprocess.Popen[str] | None = None  # the session holding row locks
        self.slowloris: SlowClients | None = None
        self.listeners_before: dict[str, list[float]] = {}  # near-cache listener gauges
        self.jobs = JobStorm()  # what the jobs fault did, for its audit
        self.revision = (
            self.run("git", "rev-parse", "--short", "HEAD", check=False).strip() or "unknown"
        )

    def run(
        self, *args: str, timeout: float = 300, check: bool = True, stdin: str | None = None
    ) -> str:
        """Run a command in the repository with the stack's environment; its stdout."""
        result = subprocess.run(  # noqa: S603  # fixed commands, no shell
            args, input=stdin, cwd=ROOT, env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            command = " ".join(args[:8]) + (" ..." if len(args) > 8 else "")
            last_lines = "\n".join(result.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"{command} failed:\n{last_lines}")
        return result.stdout if result.returncode == 0 else ""

    def popen(self, *args: str, **options: Any) -> subprocess.Popen[str]:
        """`docker compose ARGS` in the background; `options` as subprocess.Popen's."""
        return subprocess.Popen(  # noqa: S603  # fixed commands, no shell
            self.compose_command(*args), cwd=ROOT, env=self.env, text=True, **options
        )

    def compose_command(self, *args: str) -> list[str]:
        # --env-file: never the checkout's own .env, which may belong to another stack.
        return ["docker", "compose", "-p", PROJECT, "--env-file", self.env["ENV_FILE"], *args]

    def compose(self, *args: str, **options: Unpack[RunOptions]) -> str:
        return self.run(*self.compose_command(*args), **options)

    def exec(self, service: str, *command: str, **options: Unpack[RunOptions]) -> str:
        """`command`, run in `service`'s container; its stdout."""
        return self.compose("exec", "-T", service, *command, **options)

    def build_and_up(self) -> None:
        # Every api service and migrate run one image: the first api service's.
        build_arg = f"REVISION={self.revision}"
        self.compose("build", "--build-arg", build_arg, self.api_services[0], timeout=900)
        self.compose("up", "--detach", "--wait", "--wait-timeout", "180", timeout=300)

    def down(self) -> None:
        if self.holder is not None:
            self.holder.kill()
        if self.slowloris is not None:
            self.slowloris.stop()
        self.compose("unpause", "db", "redis", check=False)  # a paused container cannot stop
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)

    def http(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A request outside the load (setup, readiness); the decoded JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # our own http://localhost
            f"http://127.0.0.1:{HTTP_PORT}{path}", data=data, method=method
        )
        request.add_header("Content-Type", "application/json")
        request.add_header("Host", f"localhost:{HTTP_PORT}")  # the proxy's site is localhost
        if self.api_key:
            request.add_header("X-API-Key", self.api_key)
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            raw = response.read()
        return json.loads(raw) if raw else None

    def wait_until(self, what: str, ready: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not ready after {timeout:.0f} s")
            time.sleep(0.2)

    def answers(self, service: str, *command: str) -> bool:
        """Whether `command`, run in `service`, succeeds."""
        return self.exec(service, *command, timeout=10, check=False) != ""

    def wait_back(self, service: str) -> None:
        """Wait until `service` (db or redis) is back for its clients."""
        self.wait_until(service, lambda: self.answers(service, *READY_COMMANDS[service]))

    def api_ready(self) -> bool:
        try:
            return bool(self.http("GET", "/health/ready")["status"] == "pass")
        except (OSError, ValueError):  # URLError and HTTPError are OSErrors
            return False

    def api_containers(self) -> dict[str, tuple[int, bool]]:
        """Each api container's restart count and whether it was OOM-killed, by id."""
        ids = self.compose("ps", "--quiet", *self.api_services, check=False).split()
        if not ids:
            return {}
        lines = self.run(
            "docker", "inspect", "--format",
            "{{.Id}} {{.RestartCount}} {{.State.OOMKilled}}", *ids, check=False,
        ).splitlines()  # fmt: skip
        return {
            cid: (int(count), oom == "true")
            for cid, count, oom in (line.split() for line in lines if line.strip())
        }

    def create_api_key(self) -> None:
        """The key every request of this script carries but the bearer faults' load, made in
        a one-off of the migrate service as an operator would (docs/auth.md): the stack has
        no identity provider. No request goes without one: a request that fails to
        authenticate counts towards the limit per address (RATE_LIMIT_AUTH_FAILURES), which
        the load shares."""
        self.api_key = self.compose(
            "run", "--rm", "--no-deps", "-T", "migrate", "python", "-m", "app.core.auth.keys",
            "create", f"chaos-{secrets.token_hex(3)}", "items:read", "items:write",
            "orders:read", "orders:write", timeout=60,
        ).strip()  # fmt: skip

    def issuer(self, *args: str) -> str:
        """scripts/dev_issuer.py, run in the issuer's container (its keys are there)."""
        return self.exec(
            "issuer", "python", ISSUER_SCRIPT, "--keys", "/keys", "--issuer", ISSUER_URL,
            *args, timeout=60,
        ).strip()  # fmt: skip

    def issue_token(self) -> None:
        """A token signed by the issuer's newest key, valid far longer than a run."""
        scopes = "items:read items:write orders:read orders:write"
        self.token = self.issuer(
            "token", "--audience", ISSUER_AUDIENCE, "--scopes", scopes, "--sub", "chaos",
            "--ttl", "7200",
        )  # fmt: skip

    def credential(self, kind: str = "api-key") -> str:
        """The header line for a credential: "api-key" or "bearer"."""
        if kind == "bearer":
            return f"Authorization: Bearer {self.token}\r\n"
        return f"X-API-Key: {self.api_key}\r\n"

    def seed(self) -> None:
        tag = secrets.token_hex(3)
        for n in range(ITEMS):
            body = {"name": f"chaos-{tag}-{n}", "description": "seed"}
            self.items.append(self.http("POST", "/api/v1/items", body)["id"])

    def warm(self) -> None:
        """Wait until the api is ready, then read every item once: reads start from a full cache."""
        self.wait_until("the api", self.api_ready)
        for item_id in self.items:
            self.http("GET", f"/api/v1/items/{item_id}")


# --- Workloads: the request each client sends next -------------------------------------


def cached_read(stack: Stack) -> Request:
    return "GET", f"/api/v1/items/{random.choice(stack.items)}", None  # noqa: S311  # not crypto


def list_read(_: Stack) -> Request:
    return "GET", "/api/v1/items?limit=20", None


def patch_item(stack: Stack) -> Request:
    # A new value each time: an unchanged row is not written, so it would not wait for a lock.
    body = b'{"description": "%f"}' % time.time()
    return "PATCH", f"/api/v1/items/{random.choice(stack.items)}", body  # noqa: S311


def mixed(stack: Stack) -> Request:
    """Half cached reads, a quarter lists, a quarter writes."""
    workload = random.choice((cached_read, cached_read, list_read, patch_item))  # noqa: S311
    return workload(stack)


# --- Faults: how to cause each one and undo it ----------------------------------------


def nothing(_: Stack) -> None:
    pass


def compose_step(*args: str, wait_back: str = "", attempts: int = 1) -> Callable[[Stack], None]:
    """A fault's inject or recover: `docker compose ARGS`, tried up to `attempts` times,
    then, with `wait_back`, a wait until that service is back for its clients
    (Stack.wait_back)."""

    def step(stack: Stack) -> None:
        for attempt in range(1, attempts + 1):
            if not args:
                break
            try:
                stack.compose(*args)
                break
            except RuntimeError as exc:
                if attempt == attempts:
                    raise
                log(f"attempt {attempt} of {attempts}: {exc}")
                time.sleep(1)
        if wait_back:
            stack.wait_back(wait_back)

    return step


def pause(service: str) -> Callable[[Stack], None]:
    # A pause can fail on a container the fault before restarted (seen once, cause not
    # found): it is tried again, rather than the fault counted as missed.
    return compose_step("pause", service, attempts=3)


def unpause(service: str) -> Callable[[Stack], None]:
    def step(stack: Stack) -> None:
        # Not paused: its pause failed, which the fault already reports; recover anyway.
        stack.compose("unpause", service, check=False)
        stack.wait_back(service)

    return step


# psql as the database's superuser, whichever name the compose file gives it.
PSQL = ["sh", "-c", 'exec psql -U "$POSTGRES_USER" -d app "$@"', "psql"]


def lock_items(stack: Stack) -> None:
    """Hold a lock on every item's row from a psql session of our own. Every item: the
    clients patch random ones, and must not queue behind each other's locks."""
    stack.holder = stack.popen("exec", "-T", "db", *PSQL, "-q", stdin=subprocess.PIPE)
    assert stack.holder.stdin is not None  # noqa: S101  # stdin=PIPE
    # Exempt from any idle-in-transaction timeout the database may set for the app.
    lock = "SELECT count(*) FROM (SELECT id FROM items FOR UPDATE) AS locked;"
    stack.holder.stdin.write(f"SET idle_in_transaction_session_timeout = 0;\nBEGIN; {lock}\n")
    stack.holder.stdin.flush()
    held = "SELECT 1 FROM pg_stat_activity WHERE state LIKE 'idle in%' AND query LIKE '%AS locked;'"
    query = [*PSQL, "-tAc", held]
    stack.wait_until("the row lock", lambda: stack.answers("db", *query), timeout=10)


def unlock_items(stack: Stack) -> None:
    if stack.holder is not None:
        stack.holder.communicate("ROLLBACK;\n", timeout=30)
        stack.holder = None


# Runs inside an api container, which has no ps. A worker is a gunicorn process with
# no children of its own: the master and docker-init (`init: true`) both have some.
KILL_A_WORKER = """
import os, signal
parents, gunicorn = {}, set()
for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{entry}/stat") as f:
            parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            if b"gunicorn" in f.read() and int(entry) != os.getpid():
                gunicorn.add(int(entry))
    except OSError:
        pass
workers = sorted(gunicorn - set(parents.values()))
os.kill(workers[0], signal.SIGKILL)
print(f"killed worker {workers[0]} of {len(workers)}")
"""


def kill_worker(stack: Stack) -> None:
    killed = stack.exec(stack.api_services[0], "python", "-c", KILL_A_WORKER)
    log(f"{stack.api_services[0]}: {killed.strip()}")


# The VM target's zero-downtime deploy; a fork made without that target
# (`make init targets=k8s`) has no such script, and no `deploy` fault.
DEPLOY_SCRIPT = ROOT / "scripts" / "deploy.sh"
READY_PROBE = (
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=2)"
)


def deploy(stack: Stack) -> None:
    """Roll the api to a new build with scripts/deploy.sh: first a deploy cut off once it
    has stopped the first api (an SSH session that drops: SIGHUP to its process group),
    which must start that api again before it exits; then a whole one."""
    stack.env["REVISION"] = f"{stack.revision}-redeployed"  # a new image, as a new version's
    first = stack.api_services[0]
    log(f"deploying with scripts/deploy.sh, cut off by SIGHUP once {first} has stopped")
    cut = subprocess.Popen(  # noqa: S603  # the repository's own script
        [str(DEPLOY_SCRIPT)], cwd=ROOT, env=stack.env, text=True, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    output: list[str] = []
    for line in cut.stdout or ():
        output.append(line)
        if f"{first}: stopping" in line:
            break
    else:
        raise RuntimeError(f"deploy.sh never stopped {first}:\n{''.join(output[-5:])}")
    # Cut off once the api is down: not while it drains, before that.
    deadline = time.monotonic() + 60
    while stack.compose("ps", "--quiet", "--status", "running", first, check=False).strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"deploy.sh did not stop {first} within 60 s")
        time.sleep(0.2)
    os.killpg(cut.pid, signal.SIGHUP)
    output += cut.stdout.readlines() if cut.stdout else []
    cut.wait(timeout=120)
    deadline = time.monotonic() + 60
    while True:  # back in rotation: running, and ready (not stopped, not draining)
        try:
            stack.exec(first, "python", "-c", READY_PROBE, timeout=10)
            break
        except (RuntimeError, subprocess.SubprocessError):
            if time.monotonic() > deadline:
                last = "".join(output[-4:])
                stuck = f"a deploy cut off left {first} out of rotation:\n{last}"
                raise RuntimeError(stuck) from None
            time.sleep(1)
    log(f"the cut-off deploy put {first} back in rotation; now the whole deploy")
    stack.run(str(DEPLOY_SCRIPT), timeout=600)


def runs_new_build(stack: Stack) -> list[str]:
    """Each api service runs one container, of the new build (its OCI revision label)."""
    misses = []
    for service in stack.api_services:
        ids = stack.compose("ps", "--quiet", service, check=False).split()
        labels = stack.run(
            "docker", "inspect", "--format",
            '{{index .Config.Labels "org.opencontainers.image.revision"}}', *ids, check=False,
        ).split()  # fmt: skip
        if labels != [stack.env["REVISION"]]:
            misses.append(f"{service} runs {labels or 'nothing'}, not {stack.env['REVISION']}")
    if not misses:
        log(f"{', '.join(stack.api_services)}: one container each, of {stack.env['REVISION']}")
    return misses


# Runs inside an api container: fills each writable tmpfs until the kernel says "no space
# left" (ENOSPC), and prints what it wrote. A tmpfs is not filled past 1 GiB, so as not to
# take the host's memory: no ENOSPC by then is a miss. The tmpfs given as arguments is left
# alone: the metric files', where prometheus_client alone writes, through mmap, and a full
# tmpfs is SIGBUS rather than an error (docker-compose.prod.yml).
FILL_MOUNTS = """
import errno, os, sys
skip, cap = set(sys.argv[1:]), (1 << 30) + (1 << 20)
for line in open("/proc/mounts"):
    _, target, fstype, options = line.split()[:4]
    if fstype != "tmpfs" or target in skip or "rw" not in options.split(","):
        continue
    if not os.path.isdir(target) or not os.access(target, os.W_OK):
        continue  # Docker masks some /proc files with tmpfs: not places to write
    written, outcome = 0, "no ENOSPC after 1 GiB: unbounded"
    chunk = bytes(1 << 20)
    try:
        with open(os.path.join(target, "chaos-fill"), "wb", buffering=0) as f:
            while written < cap:
                written += f.write(chunk)
    except OSError as exc:
        outcome = "ENOSPC" if exc.errno == errno.ENOSPC else repr(exc)
    print(f"{target} {written >> 20} {outcome}")
"""
FREE_MOUNTS = """
import contextlib, os
for line in open("/proc/mounts"):
    with contextlib.suppress(OSError):
        os.remove(os.path.join(line.split()[1], "chaos-fill"))
"""
METRICS_MOUNT = "/dev/shm/prometheus"  # noqa: S108  # the metric files' own tmpfs


def fill_mounts(stack: Stack) -> None:
    """Fill every writable tmpfs of every api container, until ENOSPC."""
    problems = []
    for service in stack.api_services:
        out = stack.exec(service, "python", "-c", FILL_MOUNTS, METRICS_MOUNT, timeout=60)
        for line in out.splitlines():
            target, mib, outcome = line.split(" ", 2)
            log(f"{service}: {target} filled with {mib} MiB, then {outcome}")
            if outcome != "ENOSPC":
                problems.append(f"{service}:{target}: {outcome}")
        if not out.strip():
            problems.append(f"{service}: no writable tmpfs found")
    log(f"left alone: {METRICS_MOUNT}, the metric files' own tmpfs (prometheus_client only)")
    if problems:
        raise RuntimeError("; ".join(problems))


def free_mounts(stack: Stack) -> None:
    for service in stack.api_services:
        stack.exec(service, "python", "-c", FREE_MOUNTS)


SLOW_CLIENTS = 1000


class SlowClients:
    """The slow clients (see slowloris) in a process of their own, `scripts/chaos.py
    --slowloris N`, so that they take nothing from the load generator's event loop."""

    def __init__(self, count: int) -> None:
        self.process = subprocess.Popen(  # noqa: S603  # this script, no shell
            [sys.executable, __file__, "--slowloris", str(count)], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None  # noqa: S101  # stdout=PIPE
        self.last: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        for line in self.process.stdout:  # one JSON line a second
            self.last = json.loads(line)
            if self.last["open"] >= count or time.monotonic() > deadline:
                break
        if self.last.get("open", 0) < count:
            self.stop()
            raise RuntimeError(f"slow clients: could not hold {count} connections: {self.last}")

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGINT)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Its figures are not the fault's bar (the load's are): a process that does
            # not stop in time is killed, not left to end the whole run.
            self.process.kill()
            out, _ = self.process.communicate()
            log("slow clients: their process did not stop on SIGINT within 30 s; killed")
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else self.last


def start_slowloris(stack: Stack) -> None:
    stack.slowloris = SlowClients(SLOW_CLIENTS)
    log(f"{SLOW_CLIENTS} slow connections open: {stack.slowloris.last}")


def stop_slowloris(stack: Stack) -> None:
    if stack.slowloris is not None:
        stats = stack.slowloris.stop()
        stack.slowloris = None
        log(
            f"slow clients to {stats['address']}: {stats['opened']:.0f} connections opened, "
            f"at most {stats['max_open']:.0f} open at once, {stats['closed']:.0f} closed by "
            f"the proxy after a median {stats['median_life_s']:.1f} s, "
            f"{stats['answered']:.0f} answered; their process used {stats['cpu_s']:.1f} s of CPU"
        )


async def slow_client(
    address: tuple[str, int], n: int, count: int, stats: Counter[str], lives: list[float]
) -> None:
    """A request head that never ends, one header line every 2 to 5 s, on a connection
    opened again whenever the proxy closes it."""
    await asyncio.sleep(2 * n / count)  # the connections opened over two seconds
    while True:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            stats["refused"] += 1
            await asyncio.sleep(1)
            continue
        stats["opened"] += 1
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        opened = time.monotonic()
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            for line in range(100_000):
                await writer.drain()
                try:
                    data = await asyncio.wait_for(reader.read(4096), random.uniform(2, 5))  # noqa: S311
                except TimeoutError:
                    writer.write(b"X-Slow-%d: still sending\r\n" % line)
                    continue
                stats["answered" if data else "closed"] += 1
                lives.append(time.monotonic() - opened)
                break
        except OSError:
            stats["closed"] += 1
            lives.append(time.monotonic() - opened)
        finally:
            stats["open"] -= 1
            writer.close()


async def proxy_address() -> tuple[str, int]:
    """The proxy's own address when this machine can reach it (Linux), as a client on
    the internet would: not the published port, whose userland proxy on 127.0.0.1 would
    spend two more sockets, and the CPU to copy every byte, per connection."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(PROXY_IP, 80), 1)
    except (OSError, TimeoutError):
        return "127.0.0.1", HTTP_PORT
    writer.close()
    return PROXY_IP, 80


async def slowloris(count: int) -> None:
    """The slow clients' process: `count` of them until SIGINT; prints its figures as one
    JSON line a second, and once more at the end."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * count)), hard))
    stats = Counter[str]()
    lives: list[float] = []
    address = await proxy_address()

    def figures() -> str:
        keys = ("open", "max_open", "opened", "closed", "answered", "refused")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return json.dumps(
            {
                **{k: stats[k] for k in keys},
                "median_life_s": statistics.median(lives) if lives else 0.0,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "address": ":".join(map(str, address)),
            }
        )

    tasks = [
        asyncio.create_task(slow_client(address, n, count, stats, lives)) for n in range(count)
    ]
    try:
        while True:
            await asyncio.sleep(1)
            print(figures(), flush=True)
    except asyncio.CancelledError:
        pass
    finally:
        for task in tasks:
            task.cancel()
        print(figures(), flush=True)


# Every `app` backend terminated every STORM_EVERY_S for STORM_S: pool connections, the
# near cache's listener, all of them. Each statement is a transaction of its own, so each
# sees the connections opened since the last one.
STORM_S, STORM_EVERY_S = 10.0, 0.2  # TERMINATE_APP sleeps STORM_EVERY_S
TERMINATE_APP = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
    " WHERE usename = 'app' AND pid <> pg_backend_pid(); SELECT pg_sleep(0.2);\n"
)
LISTENER_METRIC = "app_near_cache_listener_live"
LISTENER_BACK_S = 5.0
# Runs inside an api container: the master's metrics (every worker's), as text.
SCRAPE = (
    "import os, urllib.request; print(urllib.request.urlopen("
    "f\"http://127.0.0.1:{os.environ.get('METRICS_PORT', '9000')}/metrics\", timeout=3)"
    ".read().decode())"
)


def listener_gauges(stack: Stack) -> dict[str, list[float]]:
    """Each api service's LISTENER_METRIC samples (one per worker)."""
    gauges = {}
    for service in stack.api_services:
        text = stack.exec(service, "python", "-c", SCRAPE, timeout=15, check=False)
        gauges[service] = [
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith((LISTENER_METRIC + "{", LISTENER_METRIC + " "))
        ]
    return gauges


def terminate_storm(stack: Stack) -> None:
    stack.listeners_before = listener_gauges(stack)
    rounds, killed = psql_rounds(stack, TERMINATE_APP, STORM_S, STORM_EVERY_S)
    log(f"{rounds} rounds of pg_terminate_backend: {killed} backends of role app terminated")


def psql_rounds(stack: Stack, statement: str, seconds: float, every: float) -> tuple[int, int]:
    """`statement`, which sleeps `every` seconds, again and again for `seconds` in one psql
    session: how many rounds ran, and the sum of the counts they printed."""
    rounds = int(seconds / every)
    out = stack.exec("db", *PSQL, "-qtA", stdin=statement * rounds, timeout=seconds + 120)
    return rounds, sum(int(line) for line in out.split() if line.isdigit())


CANCEL_S, CANCEL_EVERY_S = 12.0, 0.005  # CANCEL_APP sleeps CANCEL_EVERY_S
# Every running statement of the app's role cancelled, as pg_cancel_backend or a storm of
# statement timeouts does: some cancels land on a BEGIN (app/core/db.py says what that did).
CANCEL_APP = (
    "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE usename = 'app'"
    " AND state = 'active' AND pid <> pg_backend_pid(); SELECT pg_sleep(0.005);\n"
)


def cancel_storm(stack: Stack) -> None:
    rounds, cancelled = psql_rounds(stack, CANCEL_APP, CANCEL_S, CANCEL_EVERY_S)
    log(f"{rounds} rounds of pg_cancel_backend: {cancelled} statements of role app cancelled")


def listeners_back(stack: Stack) -> list[str]:
    """Every worker's near-cache listener live again within LISTENER_BACK_S of the storm's
    end, by the metric; skipped, with a note, when no listener was live before it."""
    before = stack.listeners_before
    if not any(before.values()):
        log(f"listener check skipped: no {LISTENER_METRIC} (none in this build, or metrics off)")
        return []
    if not any(1.0 in values for values in before.values()):
        log(f"listener check skipped: no listener live before the storm ({before}): near cache off")
        return []
    deadline = time.monotonic() + LISTENER_BACK_S
    while True:
        now = listener_gauges(stack)
        down = {
            service: values
            for service, values in now.items()
            if before.get(service) and (not values or any(v != 1.0 for v in values))
        }
        if not down:
            waited = LISTENER_BACK_S - (deadline - time.monotonic())
            log(f"every worker's listener live again within {waited:.1f} s: {now}")
            return []
        if time.monotonic() > deadline:
            return [f"listeners not all live {LISTENER_BACK_S:.0f} s after the storm: {down}"]
        time.sleep(0.2)


# Runs inside an api container: requests to that container's own server with a token
# whose `kid` the issuer does not publish. Each makes the worker that answers it try
# to refresh its keys (at most once per 10 s), so the outage is met, not just waited out.
UNKNOWN_KID = """
import base64, json, sys, urllib.error, urllib.request
part = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()
header = part({"alg": "RS256", "kid": "chaos-unknown", "typ": "JWT"})
signature = base64.urlsafe_b64encode(bytes(256)).rstrip(b"=").decode()  # well-formed, wrong
token = header + "." + part({"sub": "chaos"}) + "." + signature
answers = []
for _ in range(int(sys.argv[1])):
    request = urllib.request.Request(
        "http://127.0.0.1:8000/api/v1/items?limit=1",
        headers={"Authorization": "Bearer " + token},
    )
    try:
        answers.append(urllib.request.urlopen(request, timeout=5).status)
    except urllib.error.HTTPError as error:
        answers.append(error.code)
print(" ".join(map(str, answers)))
"""
UNKNOWN_KID_REQUESTS = 8  # per api container: its workers each get some, most likely
REFRESH_FAILED = "jwks refresh failed"  # app/core/auth/tokens.py's log event


def stop_issuer(stack: Stack) -> None:
    stack.compose("stop", "issuer")
    for service in stack.api_services:
        out = stack.exec(service, "python", "-c", UNKNOWN_KID, str(UNKNOWN_KID_REQUESTS))
        log(f"{service}: a token with an unknown kid, issuer down: {out.strip()}")


def refresh_failed(stack: Stack) -> list[str]:
    """The app tried to refresh its keys while the issuer was down (and kept serving: the
    load's bar says so); otherwise the fault tested nothing."""
    logs = stack.compose("logs", "--no-color", *stack.api_services, check=False)
    failed = logs.count(REFRESH_FAILED)
    log(f"{failed} key refreshes failed while the issuer was down ({REFRESH_FAILED!r})")
    return [] if failed else [f"no {REFRESH_FAILED!r} in the api logs: no refresh was tried"]


def kid_of(token: str) -> str:
    header = token.split(".", 1)[0]
    return str(json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"])


def rotate_key(stack: Stack) -> None:
    """A new signing key (the old one stays published, as providers keep it while its
    tokens live); from now on the load sends a token the new key signed, whose kid the
    api has never seen."""
    old = kid_of(stack.token)
    new = stack.issuer("rotate")
    stack.issue_token()
    log(f"signing key rotated: {old} -> {new}; the load's token now names {kid_of(stack.token)}")
    if kid_of(stack.token) != new:
        raise RuntimeError(f"the new token names {kid_of(stack.token)}, not the new key {new}")


PROXY_RELOADS = 3


def reload_proxy(stack: Stack) -> None:
    """What `make proxy-reload` does (mk/prod.mk): `caddy reload` through the admin
    endpoint in the container, with --force: a reload although nothing changed."""
    reload = "cat >/tmp/Caddyfile && caddy reload --config /tmp/Caddyfile --adapter caddyfile"
    caddyfile = (ROOT / "deploy" / "Caddyfile").read_text()
    for n in range(PROXY_RELOADS):
        time.sleep(n and 1)  # a second apart
        stack.exec("proxy", "sh", "-c", reload + " --force", stdin=caddyfile)


def proxy_back(stack: Stack) -> None:
    stack.wait_until("the proxy", stack.api_ready)


# --- Jobs: a stream of orders, each enqueueing confirm_order, through worker kills ------

JOB_STREAM = 2_000  # orders the jobs fault creates through the API, at least (short too)
ROLLED_BACK = 50  # transactions that enqueue a job and roll back
# When, as a share of JOB_STREAM acknowledged, each blow falls: spread over the stream.
KILL_AT = (0.25, 0.75)
PG_RESTART_AT = 0.5
# How long every job committed before the stream ended may take to be done: beyond the
# heartbeat timeout (after which a killed worker's jobs run again), time for a restarted
# worker to work through the backlog on a busy machine.
DRAIN_MARGIN_S = 30.0
ROLLBACK_OWNER = "chaos-rollback"  # the owner of every order the rolled-back transactions insert


@dataclass
class JobStorm:
    """What the jobs fault did and saw, for its audit."""

    acknowledged: list[str] = field(default_factory=list)  # ids of the orders answered 201
    concurrency: int = 0  # the worker's settings, read from its container
    max_attempts: int = 0
    heartbeat_timeout: float = 0.0
    kills: int = 0  # kill -9s of the worker's process
    pg_restarts: int = 0
    worker_restarts: int = 0  # its container's restarts: the kills', and none of its own
    rolled_back: list[dict[str, Any]] = field(default_factory=list)  # {"order", "job"} each
    poison_key: str = ""


def create_order(stack: Stack) -> Request:
    return "POST", "/api/v1/orders", b'{"item_id": "%s", "quantity": 1}' % stack.items[0].encode()


def order_created(stack: Stack, status: int, body: bytes) -> None:
    if status == 201:
        stack.jobs.acknowledged.append(json.loads(body)["id"])


def sql(stack: Stack, query: str, **values: str) -> list[list[str]]:
    """Rows of `query`, run by psql in the db container as the superuser. psql fills in
    each :'name' with `values[name]`, quoted: a value never becomes SQL."""
    variables = [arg for name, value in values.items() for arg in ("-v", f"{name}={value}")]
    out = stack.exec(
        "db", *PSQL, "-tAq", "-v", "ON_ERROR_STOP=1", *variables, stdin=query, timeout=60
    )
    return [line.split("|") for line in out.splitlines() if line]


# Runs inside an api container, with the app's own code: the poison job (committed, its
# payload no handler can read), then transactions that create an order as the API does
# (the order and its confirm_order job) and then fail, as a request that raises after the
# service returned: the session is left uncommitted, so it rolls back. Each prints its
# order's id and its job's id, read inside the transaction.
ROLL_BACK_ORDERS = """
import asyncio, json, sys
from sqlalchemy import text
from app.core.config import load_settings
from app.core.db import create_engine, create_session_factory
from app.core.jobs.enqueue import enqueue
from app.orders.schemas import OrderCreate
from app.orders.service import CONFIRM_ORDER, create_order

class RequestFailed(Exception):
    pass

async def main(item_id, count, poison_key, owner):
    engine = create_engine(load_settings())
    sessions = create_session_factory(engine)
    async with sessions() as session, session.begin():
        await enqueue(session, CONFIRM_ORDER, {"order_id": "not-a-uuid"}, dedupe_key=poison_key)
    for _ in range(count):
        try:
            async with sessions() as session:
                data = OrderCreate(item_id=item_id, quantity=1)
                order = await create_order(session, data, owner=owner)
                job = await session.scalar(
                    text("SELECT id FROM pgqueuer WHERE dedupe_key = :key"),
                    {"key": f"confirm:{order.id}"},
                )
                print(json.dumps({"order": str(order.id), "job": job}), flush=True)
                await asyncio.sleep(0.05)  # open while the worker dequeues, then fails
                raise RequestFailed
        except RequestFailed:
            pass
    await engine.dispose()

asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
"""

# Runs inside the worker container, which has no ps: `python -m app.worker`, by its
# command line (docker-init is PID 1, its parent; the healthcheck is another module).
KILL_JOBS_WORKER = """
import os, signal
for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{entry}/cmdline", "rb") as f:
            args = f.read().split(b"\\0")
    except OSError:
        continue
    if args[1:3] == [b"-m", b"app.worker"] and int(entry) != os.getpid():
        os.kill(int(entry), signal.SIGKILL)
        print(f"killed python -m app.worker, pid {entry}")
"""

WORKER_SETTINGS = (
    "from app.core.config import load_settings; s = load_settings(); "
    "print(s.jobs_concurrency, s.jobs_max_attempts, s.jobs_heartbeat_timeout)"
)


def worker_state(stack: Stack) -> tuple[int, str]:
    """The worker container's restart count and health ("healthy", "starting", ...)."""
    ids = stack.compose("ps", "--all", "--quiet", "worker", check=False).split()
    if not ids:
        return 0, "absent"
    health = "{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}"
    out = stack.run(
        "docker", "inspect", "--format", "{{.RestartCount}} " + health, ids[0], check=False
    ).split()
    return (int(out[0]), out[1]) if len(out) == 2 else (0, "unknown")


def wait_worker_healthy(stack: Stack) -> None:
    stack.wait_until("the jobs worker", lambda: worker_state(stack)[1] == "healthy", timeout=90)


def kill_jobs_worker(stack: Stack) -> None:
    """kill -9 of the worker's process; its container's restart policy brings it back."""
    restarts, _ = worker_state(stack)
    killed = stack.exec("worker", "python", "-c", KILL_JOBS_WORKER, check=False)
    if "killed" not in killed:
        raise RuntimeError("no python -m app.worker to kill in the worker container")
    stack.jobs.kills += 1
    started = time.monotonic()
    stack.wait_until("the worker's restart", lambda: worker_state(stack)[0] > restarts, timeout=60)
    waited = time.monotonic() - started
    log(f"worker: {killed.strip()}; restarted by its restart policy in {waited:.1f} s")


def db_now(stack: Stack) -> str:
    return sql(stack, "SELECT now()")[0][0]


def worker_working(stack: Stack) -> float:
    """Wait until the worker has finished a job from now on (the database's time): a kill
    then meets a worker at work, not one still starting. Returns the seconds waited."""
    done = "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful' AND created > :'since'"
    since, started = db_now(stack), time.monotonic()
    stack.wait_until(
        "the jobs worker at work", lambda: sql(stack, done, since=since) != [["0"]], timeout=90
    )
    return time.monotonic() - started


def acknowledged_reach(stack: Stack, share: float) -> None:
    """Wait until `share` of JOB_STREAM orders have been answered 201."""
    stack.wait_until(
        f"{share:.0%} of the job stream",
        lambda: len(stack.jobs.acknowledged) >= share * JOB_STREAM,
        timeout=300,
    )


def job_storm(stack: Stack) -> None:
    """During the stream of orders: the poison job and the rolled-back transactions (in
    an api container), the worker killed twice, each time while at work, Postgres
    restarted once between; returns once JOB_STREAM orders have been acknowledged."""
    storm = stack.jobs
    wait_worker_healthy(stack)  # after an earlier fault, it may be restarting still
    concurrency, attempts, heartbeat = stack.exec("worker", "python", "-c", WORKER_SETTINGS).split()
    storm.concurrency, storm.max_attempts = int(concurrency), int(attempts)
    storm.heartbeat_timeout = float(heartbeat)
    storm.worker_restarts = -worker_state(stack)[0]
    storm.poison_key = f"chaos-poison-{secrets.token_hex(4)}"
    rollbacks = stack.popen(
        "exec", "-T", stack.api_services[0], "python", "-c", ROLL_BACK_ORDERS,
        stack.items[1], str(ROLLED_BACK), storm.poison_key, ROLLBACK_OWNER,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    acknowledged_reach(stack, KILL_AT[0])
    worker_working(stack)
    kill_jobs_worker(stack)
    out, err = rollbacks.communicate(timeout=120)
    storm.rolled_back = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if rollbacks.returncode != 0 or len(storm.rolled_back) != ROLLED_BACK:
        raise RuntimeError(f"the rolled-back transactions: {err.strip()[-300:]}")
    log(f"{ROLLED_BACK} transactions rolled back after enqueueing; poison {storm.poison_key}")
    acknowledged_reach(stack, PG_RESTART_AT)
    log(f"restarting Postgres at {len(storm.acknowledged)} orders")
    stack.compose("restart", "db")
    storm.pg_restarts += 1
    stack.wait_back("db")
    # The worker's own connection ends with Postgres's restart: its process lives on and
    # starts a new PgQueuer on new connections (the audit checks it was not restarted).
    log(f"Postgres back; the worker at work again {worker_working(stack):.1f} s later")
    acknowledged_reach(stack, KILL_AT[1])
    worker_working(stack)
    kill_jobs_worker(stack)
    acknowledged_reach(stack, 1.0)


def jobs_back(stack: Stack) -> None:
    stack.wait_back("db")
    wait_worker_healthy(stack)


# The audit's queries: :'end' is the database's time when the stream ended, :'item' the
# stream's item.
PENDING = """
SELECT (SELECT count(*) FROM orders WHERE confirmed_at IS NULL AND created_at < :'end'),
       (SELECT coalesce(max(status::text), 'absent') FROM pgqueuer WHERE dedupe_key = :'poison')
"""
STREAM_ORDERS = "SELECT id, confirmed_at IS NOT NULL FROM orders WHERE item_id = :'item'"
ORDERS_BEFORE = """
SELECT count(*), count(*) FILTER (WHERE confirmed_at IS NULL) FROM orders WHERE created_at < :'end'
"""
ROLLED_BACK_LEFT = """
SELECT (SELECT count(*) FROM orders WHERE id = ANY(:'orders'::uuid[])),
       (SELECT count(*) FROM orders WHERE owner = :'owner'),
       (SELECT count(*) FROM pgqueuer WHERE id = ANY(:'jobs'::bigint[])
          OR dedupe_key = ANY(SELECT 'confirm:' || o FROM unnest(:'orders'::uuid[]) AS o)
          OR convert_from(payload, 'UTF8')::jsonb ->> 'order_id'
             = ANY(SELECT o::text FROM unnest(:'orders'::uuid[]) AS o)),
       (SELECT count(*) FROM pgqueuer_log WHERE job_id = ANY(:'jobs'::bigint[]))
"""
# Per job queued since the stream's first order: its picks, whether it ever raised (a
# retry is logged as 'queued' with the error), whether it succeeded.
STREAM_JOBS = """
WITH jobs AS (
  SELECT job_id, count(*) FILTER (WHERE status = 'picked') AS picks,
    bool_or(status IN ('exception', 'failed')
            OR (status = 'queued' AND traceback IS NOT NULL)) AS raised,
    bool_or(status = 'successful') AS succeeded
  FROM pgqueuer_log WHERE entrypoint = 'confirm_order' GROUP BY job_id
  HAVING min(created) >= (SELECT min(created_at) FROM orders WHERE item_id = :'item')
    AND min(created) < :'end')
SELECT count(*), count(*) FILTER (WHERE succeeded), count(*) FILTER (WHERE raised),
  coalesce(sum(picks - 1) FILTER (WHERE NOT raised), 0),
  count(*) FILTER (WHERE NOT raised AND picks > 1),
  coalesce(max(picks) FILTER (WHERE NOT raised), 0)
FROM jobs
"""
QUEUED_BEFORE = "SELECT count(*) FROM pgqueuer WHERE created < :'end' AND status <> 'failed'"
POISON = "SELECT id, status, attempts FROM pgqueuer WHERE dedupe_key = :'poison'"
POISON_LOG = """
SELECT count(*) FILTER (WHERE status = 'picked'),
  count(*) FILTER (WHERE status = 'queued' AND traceback IS NOT NULL),
  (SELECT (traceback ->> 'exception_type') || ': ' || (traceback ->> 'exception_message')
     FROM pgqueuer_log WHERE job_id = :'job'::bigint AND status = 'failed'
     ORDER BY id DESC LIMIT 1),
  (SELECT count(*) FROM pgqueuer WHERE status = 'failed' AND created < :'end')
FROM pgqueuer_log WHERE job_id = :'job'::bigint
"""


def job_audit(stack: Stack) -> list[str]:
    """Once the stream has stopped: every job committed before its end done within the
    heartbeat timeout + DRAIN_MARGIN_S, none from a rolled-back transaction, duplicate
    runs within (kills + Postgres restarts) x JOBS_CONCURRENCY, and the poison job held
    as failed after its retries while every other job succeeded."""
    storm, problems = stack.jobs, []
    end, item = db_now(stack), stack.items[0]
    bound = storm.heartbeat_timeout + DRAIN_MARGIN_S
    started = time.monotonic()
    while True:
        ((pending, poison_status),) = sql(stack, PENDING, end=end, poison=storm.poison_key)
        if int(pending) == 0 and poison_status == "failed":
            break
        if time.monotonic() - started > bound:
            problems.append(
                f"{pending} orders unconfirmed, the poison job {poison_status}, {bound:.0f} s "
                "after the stream ended"
            )
            break
        time.sleep(0.5)
    drained = time.monotonic() - started

    # Every order answered 201, and every order committed before the stream ended, confirmed.
    confirmed = {order: flag == "t" for order, flag in sql(stack, STREAM_ORDERS, item=item)}
    acknowledged = set(storm.acknowledged)
    missing = acknowledged - confirmed.keys()
    unconfirmed = {order for order in acknowledged if confirmed.get(order) is False}
    ((orders, unconfirmed_all),) = sql(stack, ORDERS_BEFORE, end=end)
    log(
        f"jobs: {len(acknowledged)} orders answered 201 ({len(confirmed)} committed for the "
        f"stream's item: {len(confirmed) - len(acknowledged)} without a 201 seen); "
        f"{orders} orders in the database before the stream ended, {unconfirmed_all} "
        f"unconfirmed; done {drained:.1f} s after the stream ended (bound {bound:.0f} s)"
    )
    if missing:
        problems.append(f"{len(missing)} orders answered 201 and missing: {sorted(missing)[:5]}")
    if unconfirmed or int(unconfirmed_all):
        problems.append(f"lost jobs: {max(len(unconfirmed), int(unconfirmed_all))} unconfirmed")

    # The rolled-back transactions left nothing: no order, no job, no log of one.
    ((orders_left, owners_left, jobs_left, logged),) = sql(
        stack,
        ROLLED_BACK_LEFT,
        orders="{" + ",".join(str(uuid.UUID(r["order"])) for r in storm.rolled_back) + "}",
        jobs="{" + ",".join(str(int(r["job"])) for r in storm.rolled_back) + "}",
        owner=ROLLBACK_OWNER,
    )
    log(
        f"jobs: {len(storm.rolled_back)} transactions rolled back after enqueueing: "
        f"{orders_left} of their orders ({owners_left} by their owner), {jobs_left} of "
        f"their jobs, {logged} log rows of their jobs (picked, run or queued) remain"
    )
    if leftovers := int(orders_left) + int(owners_left) + int(jobs_left) + int(logged):
        problems.append(f"rolled-back transactions left {leftovers} rows behind")

    # Duplicate runs: picks beyond the first of the jobs that never raised. A worker holds
    # at most JOBS_CONCURRENCY picked jobs (PgQueuer's cap, counting those whose outcome
    # it has not written yet), and each loss of it can leave them all to run again: a
    # kill, or Postgres's restart (the worker's PgQueuer ends with its connection).
    ((jobs, succeeded, raised, extra_picks, picked_again, most_picks),) = sql(
        stack, STREAM_JOBS, item=item, end=end
    )
    storm.worker_restarts += worker_state(stack)[0]
    allowed = (storm.kills + storm.pg_restarts) * storm.concurrency
    log(
        f"jobs: {jobs} confirm_order jobs since the stream began, {succeeded} successful, "
        f"{raised} raised at least once (the poison among them); {extra_picks} duplicate "
        f"runs ({picked_again} jobs picked more than once, at most {most_picks} times) "
        f"after {storm.kills} kills and {storm.pg_restarts} Postgres restart, "
        f"JOBS_CONCURRENCY={storm.concurrency}: bar ≤ {allowed}; the worker's container "
        f"restarted {storm.worker_restarts} times"
    )
    if storm.worker_restarts != storm.kills:
        problems.append(
            f"the worker's container restarted {storm.worker_restarts} times for "
            f"{storm.kills} kills: a lost connection must not end its process"
        )
    if int(extra_picks) > allowed:
        problems.append(f"{extra_picks} duplicate runs (bar ≤ {allowed})")
    if int(succeeded) != int(jobs) - 1:
        problems.append(f"{int(jobs) - 1 - int(succeeded)} jobs besides the poison unsuccessful")
    ((held,),) = sql(stack, QUEUED_BEFORE, end=end)
    if int(held):
        problems.append(f"{held} jobs still in the queue")
    return problems + poison_audit(stack, end)


def poison_audit(stack: Stack, end: str) -> list[str]:
    """The poison job: kept as failed, its attempts JOBS_MAX_ATTEMPTS (a first run, then
    that many retries), its last error kept, the CLI lists it; the only failed job."""
    storm, problems = stack.jobs, []
    rows = sql(stack, POISON, poison=storm.poison_key)
    if not rows:
        return ["the poison job is not in the queue"]
    ((job_id, status, attempts),) = rows
    ((picks, retries, last_error, failed_jobs),) = sql(stack, POISON_LOG, job=job_id, end=end)
    listed = stack.exec("worker", "python", "-m", "app.core.jobs.cli", "failed")
    # Listed with what it died of: the poison payload's ValueError.
    in_cli = any(
        line.split("\t")[0] == job_id and "ValueError" in line for line in listed.splitlines()
    )
    log(
        f"jobs: poison job {job_id} {status}, attempts={attempts} (JOBS_MAX_ATTEMPTS="
        f"{storm.max_attempts}), run {picks} times, retried {retries} times, last error "
        f"{last_error!r}; {'listed' if in_cli else 'NOT listed'} with its error by `cli failed`; "
        f"{failed_jobs} failed jobs in all"
    )
    if status != "failed" or int(attempts) != storm.max_attempts:
        problems.append(
            f"poison job {status}, attempts={attempts} (bar: failed, {storm.max_attempts})"
        )
    if int(retries) != storm.max_attempts:
        problems.append(f"poison job retried {retries} times (bar: {storm.max_attempts})")
    if not last_error.startswith("ValueError"):
        problems.append(f"poison job's last error not kept: {last_error!r}")
    if not in_cli:
        problems.append(
            "poison job not listed with its error by `python -m app.core.jobs.cli failed`"
        )
    if int(failed_jobs) != 1:
        problems.append(f"{failed_jobs} failed jobs (bar: the poison alone)")
    return problems


# --- Bars: what each fault may cost (docs/chaos.md, "The bars") ------------------------


@dataclass(frozen=True)
class Bar:
    """What a fault may cost at most. A check left None is not made. A timeout or a failed
    connection is never an allowed answer."""

    # The answer a healthy stack gives the workload: 201 for a create.
    ok: int = 200
    # Answers allowed from the fault until `settle_s` after recovery; `ok` only after that.
    statuses: frozenset[int] = frozenset({200})
    settle_s: float = 0.0
    retry_after: bool = False  # every 503 carries Retry-After
    min_ratio: float | None = None  # throughput during the fault / before it
    # The ratio's baseline is the rate before and after the fault (both without it), not
    # before alone: on a shared machine a few seconds' baseline moves with other jobs.
    ratio_to_before_and_after: bool = False
    added_p99_ms: float | None = None  # p99 latency during the fault - before it
    max_latency_s: float | None = None  # every answer during the fault within this
    readiness: str | None = None  # /health/ready's status in the middle of the fault
    # Responses cut off mid-body allowed until this long after the fault was injected.
    # A proxy can resend a request whose response never began, never one the client has
    # begun to receive: a worker killed while sending a response breaks that response.
    cut_short_s: float | None = None
    max_restarts: int | None = None  # api container restarts (or OOM kills) allowed

    @property
    def baseline_name(self) -> str:
        return "without it" if self.ratio_to_before_and_after else "before"

    def describe(self) -> str:
        parts = ["/".join(map(status_name, sorted(self.statuses))) + " only"]
        if self.retry_after:
            parts[0] += ", 503s with Retry-After"
        if self.min_ratio is not None:
            parts.append(f"≥ {self.min_ratio}x the throughput {self.baseline_name}")
        if self.added_p99_ms is not None:
            parts.append(f"p99 ≤ +{self.added_p99_ms:.0f} ms")
        if self.max_latency_s is not None:
            parts.append(f"each ≤ {self.max_latency_s:g} s")
        if self.settle_s:
            parts.append(f"all {self.ok} {self.settle_s:.0f} s after")
        if self.readiness:
            parts.append(f"ready: {self.readiness}")
        if self.cut_short_s is not None:
            parts.append(f"responses cut off within {self.cut_short_s:.0f} s of the fault allowed")
        if self.max_restarts == 0:
            parts.append("no api container restart")
        elif self.max_restarts is not None:
            parts.append(f"≤ {self.max_restarts} api container restarts")
        return "; ".join(parts)


# Redis gone, every cached read becomes a Postgres read, and `make bench` holds cached
# reads at >= 2x uncached ones: 0.5x is the most a healthy stack can keep, so the bar
# sits below it. The calls made before the breaker opens each wait the 50 ms socket
# timeout: the latency bar is that, plus what queues behind it. With 16 clients those
# calls are about 1% of a short run's fault, so the p99 lands on them: the timeout, not
# the bar, is what leaves room for a busy machine.
REDIS_OPTIONAL = Bar(min_ratio=0.4, added_p99_ms=150, readiness="warn")
DB_UNAVAILABLE = Bar(statuses=frozenset({200, 503}), settle_s=5, retry_after=True)


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    workload: Callable[[Stack], Request]
    inject: Callable[[Stack], None]
    bar: Bar
    recover: Callable[[Stack], None] = nothing  # returns once the dependency is back
    hold_s: float = 10.0  # how long the fault lasts between inject and recover
    credential: str = "api-key"  # what the load sends: "api-key" or "bearer" (Stack.credential)
    # At least this long before the fault, whatever the phases say (see the issuer's faults).
    min_before_s: float = 0.0
    # Checks made once the dependency is back, during the after phase; each miss in words.
    verify: Callable[[Stack], list[str]] | None = None
    # Told each answer of the load: its status and body (the orders the jobs fault made).
    on_answer: Callable[[Stack, int, bytes], None] | None = None
    # Checks made once the load has stopped, of what its requests left behind; not made
    # when the fault could not be injected.
    audit: Callable[[Stack], list[str]] | None = None


FAULTS = [
    Fault(
        name="redis-stop",
        summary="Redis stopped (cached item reads)",
        workload=cached_read,
        inject=compose_step("stop", "redis"),
        recover=compose_step("start", "redis", wait_back="redis"),
        bar=REDIS_OPTIONAL,
        hold_s=12,
    ),
    Fault(
        name="redis-pause",
        summary="Redis paused: alive but silent (cached item reads)",
        workload=cached_read,
        inject=pause("redis"),
        recover=unpause("redis"),
        bar=REDIS_OPTIONAL,
    ),
    Fault(
        name="pg-restart",
        summary="Postgres restarted (list)",
        workload=list_read,
        inject=compose_step("restart", "db"),
        recover=compose_step(wait_back="db"),
        bar=DB_UNAVAILABLE,
        hold_s=0,
    ),
    Fault(
        name="pg-stop",
        summary="Postgres stopped for 10 s (list)",
        workload=list_read,
        inject=compose_step("stop", "db"),
        recover=compose_step("start", "db", wait_back="db"),
        bar=replace(DB_UNAVAILABLE, max_latency_s=2),
    ),
    Fault(
        name="pg-pause",
        summary="Postgres paused: alive but silent (list)",
        workload=list_read,
        inject=pause("db"),
        recover=unpause("db"),
        # The statement's timeout and the client's half second on top, then the 503: a
        # connection thrown away must add no wait on the silent server (app/core/db.py).
        bar=replace(DB_UNAVAILABLE, max_latency_s=3.5),
    ),
    Fault(
        name="pg-lock",
        summary="row locks held on every item (PATCH items)",
        workload=patch_item,
        inject=lock_items,
        recover=unlock_items,
        bar=DB_UNAVAILABLE,
    ),
    Fault(
        name="worker-kill",
        summary="a Gunicorn worker killed with SIGKILL (cached item reads)",
        workload=cached_read,
        inject=kill_worker,  # Gunicorn's master starts a new worker by itself
        # The proxy retries the killed worker's idempotent requests, except those whose
        # response it had begun to forward: no one can send those again.
        bar=Bar(cut_short_s=1.0),
        hold_s=5,
    ),
    Fault(
        name="jobs",
        summary=(
            f"{JOB_STREAM:,} orders, each enqueueing a job; the jobs worker killed twice, "
            f"Postgres restarted, {ROLLED_BACK} enqueueing transactions rolled back, a poison job"
        ),
        workload=create_order,
        inject=job_storm,  # returns when the stream has JOB_STREAM orders
        recover=jobs_back,
        # Order POSTs while Postgres restarts: 503 with Retry-After, as for the reads.
        bar=replace(DB_UNAVAILABLE, ok=201, statuses=frozenset({201, 503})),
        hold_s=0,
        on_answer=order_created,
        audit=job_audit,
    ),
    Fault(
        name="tmpfs-fill",
        summary="every writable tmpfs of every api filled until ENOSPC (reads, lists, PATCH)",
        workload=mixed,
        inject=fill_mounts,
        recover=free_mounts,
        bar=Bar(max_restarts=0),
    ),
    Fault(
        name="slowloris",
        summary=f"{SLOW_CLIENTS} connections sending their headers slowly (cached item reads)",
        workload=cached_read,
        inject=start_slowloris,
        recover=stop_slowloris,
        bar=Bar(min_ratio=0.8, ratio_to_before_and_after=True),
        # Longer than the proxy's read_header timeout (deploy/Caddyfile), even halved.
        hold_s=24,
    ),
    Fault(
        name="pg-terminate",
        summary="every app backend terminated every 200 ms for 10 s (reads, lists, PATCH)",
        workload=mixed,
        inject=terminate_storm,  # returns when the storm is over
        bar=replace(DB_UNAVAILABLE, settle_s=3),
        hold_s=0,
        verify=listeners_back,
    ),
    Fault(
        name="pg-cancel",
        summary="every running app statement cancelled, every 5 ms for 12 s (reads, lists, PATCH)",
        workload=mixed,
        inject=cancel_storm,  # returns when the storm is over
        bar=replace(DB_UNAVAILABLE, settle_s=3),
        hold_s=0,
    ),
    Fault(
        name="proxy-restart",
        summary="`docker compose restart proxy`, as after a Caddyfile change (cached item reads)",
        workload=cached_read,
        inject=compose_step("restart", "proxy"),
        recover=proxy_back,
        # Connections refused or dropped while Caddy is down: the gap is printed.
        bar=Bar(statuses=frozenset({200, FAILED}), settle_s=1),
        hold_s=0,
    ),
    Fault(
        name="proxy-reload",
        summary=f"`make proxy-reload` x{PROXY_RELOADS}: caddy reload, admin API (cached reads)",
        workload=cached_read,
        inject=reload_proxy,
        bar=Bar(),  # zero failed requests
        hold_s=0,
    ),
    # The load sends bearer tokens. Each worker fetches the issuer's keys when it first
    # sees a token, and then at most once per 10 s (app/core/auth/tokens.py): the faults
    # begin 12 s into the load, so that a worker may fetch again when the fault needs it.
    Fault(
        name="jwks-down",
        summary="the issuer (its JWKS) stopped; unknown kids make workers refetch (bearer reads)",
        workload=cached_read,
        inject=stop_issuer,
        recover=compose_step("up", "--detach", "--wait", "--no-deps", "issuer"),
        bar=Bar(),  # zero failed requests: the cached keys keep verifying
        credential="bearer",
        min_before_s=12,
        verify=refresh_failed,
    ),
    Fault(
        name="key-rotated",
        summary="the signing key rotated; the load then sends tokens naming its kid (bearer reads)",
        workload=cached_read,
        inject=rotate_key,
        bar=Bar(),  # zero failed requests: an unknown kid fetches the keys at once
        credential="bearer",
        min_before_s=12,
    ),
]
if DEPLOY_SCRIPT.exists():
    FAULTS.append(
        Fault(
            name="deploy",
            summary="deploy.sh of a new build, cut off by SIGHUP, then whole (cached reads)",
            workload=cached_read,
            inject=deploy,
            bar=Bar(),  # zero failed requests
            hold_s=0,
            verify=runs_new_build,
        )
    )


# --- Running a fault and judging it ------------------------------------------------------


@dataclass(frozen=True)
class Phases:
    before_s: float
    after_s: float
    hold_scale: float  # applied to each fault's hold_s


FULL = Phases(before_s=6, after_s=8, hold_scale=1.0)
SHORT = Phases(before_s=3, after_s=6, hold_scale=0.5)


@dataclass
class Result:
    fault: Fault
    samples: list[Sample]
    inject_at: float  # seconds since the load began
    injected_at: float  # when `inject` returned: the fault has happened by then
    back_at: float  # when `recover` returned: the dependency is back
    end_at: float
    readiness: str | None = None  # /health/ready's status in the middle of the fault
    error: str | None = None
    restarts: int = 0  # api container restarts and OOM kills during the fault
    verified: list[str] = field(default_factory=list)  # the fault's own checks' misses
    misses: list[str] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[Sample]:
        """The requests started between `start` and `end`."""
        return [s for s in self.samples if start <= s.start < end]

    def rate(self, start: float, end: float) -> float:
        return len(self.window(start, end)) / max(end - start, 1e-9)

    @property
    def before(self) -> list[Sample]:
        """Requests answered before the fault began."""
        return [s for s in self.samples if s.end < self.inject_at]

    @property
    def fault_on(self) -> list[Sample]:
        """Requests answered after the fault began: those in flight at that moment too."""
        return [s for s in self.samples if s.end >= self.inject_at and s.start < self.end_at]

    @property
    def during(self) -> list[Sample]:
        return self.window(self.inject_at, self.back_at)

    @property
    def after(self) -> list[Sample]:
        return self.window(self.back_at, self.end_at)

    def baseline(self) -> float:
        """The rate the fault's throughput is compared with: before it, or before and after."""
        if not self.fault.bar.ratio_to_before_and_after:
            return self.rate(0, self.inject_at)
        quiet = len(self.window(0, self.inject_at)) + len(self.after)
        return quiet / max(self.inject_at + self.end_at - self.back_at, 1e-9)

    def gap(self) -> float:
        """From the first answer other than `ok` to the end of the last one, in seconds."""
        failed = [s for s in self.fault_on if s.status != self.fault.bar.ok]
        return max(s.end for s in failed) - min(s.start for s in failed) if failed else 0.0


async def readiness_in(delay: float) -> str:
    await asyncio.sleep(delay)
    status, _, body = await send(Connection(), ("GET", "/health/ready", None))
    try:
        return str(json.loads(body)["status"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}" if status > 0 else "no answer"


async def run_fault(stack: Stack, fault: Fault, phases: Phases) -> Result:
    """Load before, during and after the fault; the samples and the fault's timeline."""
    await asyncio.to_thread(stack.warm)
    on_answer = fault.on_answer
    load = Load(
        lambda: fault.workload(stack),
        lambda: stack.credential(fault.credential),
        (lambda status, body: on_answer(stack, status, body)) if on_answer else None,
    )
    clients = asyncio.create_task(load.run())
    hold = fault.hold_s * phases.hold_scale
    error = readiness = None
    verified: list[str] = []
    containers = await asyncio.to_thread(stack.api_containers)
    try:
        await asyncio.sleep(max(phases.before_s, fault.min_before_s))
        inject_at = injected_at = load.now()
        try:
            await asyncio.to_thread(fault.inject, stack)
            injected_at = load.now()
            probe = asyncio.create_task(readiness_in(hold / 2))
            await asyncio.sleep(hold)
            readiness = await probe
        except (RuntimeError, subprocess.SubprocessError) as exc:
            error = f"inject: {exc}"
            log(f"{fault.name}: {error}")  # before recover, whose own failure would hide it
        await asyncio.to_thread(fault.recover, stack)
        back_at = load.now()
        after = asyncio.create_task(asyncio.sleep(phases.after_s))
        if fault.verify is not None:
            verified = await asyncio.to_thread(fault.verify, stack)
        await after
        end_at = load.now()
    finally:
        load.stop()
        await clients
    if fault.audit is not None and error is None:
        verified += await asyncio.to_thread(fault.audit, stack)
    restarts = restarts_between(containers, await asyncio.to_thread(stack.api_containers))
    if load.resent:
        log(f"{load.resent} GETs sent again on a new connection: their kept-alive one closed")
    if load.failures:
        log("failed requests: " + ", ".join(f"{why} x{n}" for why, n in load.failures.items()))
    return Result(
        fault, load.samples, inject_at, injected_at, back_at, end_at, readiness, error,
        restarts, verified,
    )  # fmt: skip


def restarts_between(
    before: dict[str, tuple[int, bool]], after: dict[str, tuple[int, bool]]
) -> int:
    """Restarts and OOM kills of the api containers present before and after (a deploy
    replaces containers: the new ones are not restarts)."""
    return sum(
        after[cid][0] - count + (after[cid][1] and not oom)
        for cid, (count, oom) in before.items()
        if cid in after
    )


def p99(samples: list[Sample]) -> float:
    latencies = sorted(s.latency for s in samples)
    return latencies[int(0.99 * (len(latencies) - 1))] if latencies else 0.0


def status_name(status: int) -> str:
    return {TIMEOUT: "timeout", FAILED: "failed", CUT_SHORT: "cut-short"}.get(status, str(status))


def tally(samples: list[Sample]) -> str:
    counts = Counter(status_name(s.status) for s in samples)
    return " ".join(f"{name}x{n}" for name, n in sorted(counts.items())) or "none"


def judge(result: Result) -> list[str]:
    """Each way the result misses its fault's bar, in words; empty when it meets it."""
    bar, misses = result.fault.bar, []
    if result.error:
        misses.append(result.error)
    if not result.before or any(s.status != bar.ok for s in result.before):
        misses.append(f"the stack was not healthy before the fault: {tally(result.before)}")
    settled = result.back_at + bar.settle_s
    fault_on = result.fault_on
    cut_short_until = result.injected_at + (bar.cut_short_s or 0.0)
    wrong = [
        s
        for s in fault_on
        if s.status not in (bar.statuses if s.start < settled else {bar.ok})
        and not (bar.cut_short_s is not None and s.status == CUT_SHORT and s.end <= cut_short_until)
    ]
    if wrong:
        misses.append(f"answers outside the bar: {tally(wrong)}")
    if bar.retry_after and (bare := [s for s in fault_on if s.status == 503 and not s.retry_after]):
        misses.append(f"{len(bare)} x 503 without Retry-After")
    during_rate, base = result.rate(result.inject_at, result.back_at), result.baseline()
    if bar.min_ratio is not None and during_rate < bar.min_ratio * base:
        misses.append(
            f"throughput {during_rate / base:.2f}x the rate {bar.baseline_name} "
            f"(bar ≥ {bar.min_ratio}x)"
        )
    added_ms = (p99(result.during) - p99(result.before)) * 1000
    if bar.added_p99_ms is not None and added_ms > bar.added_p99_ms:
        misses.append(f"p99 latency +{added_ms:.0f} ms (bar ≤ +{bar.added_p99_ms:.0f} ms)")
    worst = max((s.latency for s in result.during), default=0.0)
    if bar.max_latency_s is not None and worst > bar.max_latency_s:
        misses.append(f"slowest answer {worst:.1f} s (bar ≤ {bar.max_latency_s:g} s)")
    if bar.readiness is not None and result.readiness != bar.readiness:
        misses.append(f"readiness said {result.readiness} (bar: {bar.readiness})")
    if bar.max_restarts is not None and result.restarts > bar.max_restarts:
        misses.append(f"{result.restarts} api container restarts (bar ≤ {bar.max_restarts})")
    return misses + result.verified


# --- Reporting ---------------------------------------------------------------------------


def print_ledger(result: Result) -> None:
    """One line per whole second: requests started that second, their answers, latencies."""
    names = sorted(
        {status_name(s.status) for s in result.samples}, key=lambda n: (not n.isdigit(), n)
    )
    cells = " ".join(f"{n:>7}" for n in names)
    print(f"{'t':>4} {'phase':<6} {'req':>5} {cells}   p50 ms   max ms")
    for second in range(int(result.end_at)):
        if second < int(result.inject_at):
            phase = "before"
        else:
            phase = "fault" if second < result.back_at else "after"
        samples = result.window(second, second + 1)
        counts = Counter(status_name(s.status) for s in samples)
        latencies = sorted(s.latency for s in samples) or [float("nan")]  # none started
        p50, worst = latencies[len(latencies) // 2] * 1000, latencies[-1] * 1000
        cells = " ".join(f"{counts.get(n, 0):>7}" for n in names)
        print(f"{second:>4} {phase:<6} {len(samples):>5} {cells} {p50:>8.0f} {worst:>8.0f}")


HEADER = [
    "fault", "before r/s", "during r/s", "after r/s", "fault lasted",
    "non-200 (during + after)", "timeouts", "slowest", "gap", "restarts", "bar",
]  # fmt: skip


def summary_row(result: Result) -> list[str]:
    before = result.rate(0, result.inject_at)
    during = result.rate(result.inject_at, result.back_at)
    base = result.baseline()
    fault_on = result.fault_on
    non_200 = [s for s in fault_on if s.status not in (result.fault.bar.ok, TIMEOUT)]
    return [
        result.fault.name,
        f"{before:.0f}",
        f"{during:.0f} ({during / base:.2f}x)" if base else f"{during:.0f}",
        f"{result.rate(result.back_at, result.end_at):.0f}",
        f"{result.back_at - result.inject_at:.1f} s",
        tally(non_200) if non_200 else "-",
        str(sum(s.status == TIMEOUT for s in fault_on)),
        f"{max((s.latency for s in fault_on), default=0.0):.2f} s",
        f"{result.gap():.2f} s",
        str(result.restarts),
        "PASS" if not result.misses else "MISS",
    ]


def print_table(results: list[Result]) -> None:
    """A Markdown table, ready to paste into docs/chaos.md, then each miss."""
    rows = [HEADER, *(summary_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    for n, row in enumerate(rows):
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")
        if n == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for result in results:
        for miss in result.misses:
            print(f"  {result.fault.name}: {miss}")


# --- Main --------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"chaos [{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def run_all(stack: Stack, faults: list[Fault], phases: Phases) -> list[Result]:
    """Each fault in turn, the keyed writer throughout. A stack that does not recover
    stops the run: later faults would measure the wreck of an earlier one."""
    results = []
    item = await asyncio.to_thread(
        stack.http, "POST", "/api/v1/items", {"name": f"chaos-orders-{secrets.token_hex(3)}"}
    )
    writer = KeyedWriter(item["id"], stack.credential())
    writing = asyncio.create_task(writer.run())
    for fault in faults:
        log(f"{fault.name}: {fault.summary}; bar: {fault.bar.describe()}")
        try:
            result = await run_fault(stack, fault, phases)
        except RuntimeError as exc:
            log(f"{fault.name}: stopping the run, the stack did not recover: {exc}")
            print(stack.compose("ps", "--all", check=False))
            for service in stack.api_services:
                print(stack.compose("logs", "--no-color", "--tail", "20", service, check=False))
            break
        result.misses = judge(result)
        print_ledger(result)
        if result.readiness is not None:
            print(f"/health/ready in the middle of the fault: {result.readiness}")
        print_table([result])
        results.append(result)
    writer.stop()
    await writing
    stack.write_problems = await asyncio.to_thread(writer.check, stack)
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faults", nargs="*", metavar="FAULT", help="faults to run (default: all)")
    parser.add_argument("--short", action="store_true", help="shorter phases, for CI")
    parser.add_argument("--list", action="store_true", help="list the faults and their bars")
    parser.add_argument("--keep", action="store_true", help="leave the stack up, to look into it")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an app setting for the stack (CACHE_LOCAL_TTL_SECONDS=5); repeatable",
    )
    parser.add_argument("--slowloris", type=int, help=argparse.SUPPRESS)  # SlowClients' process
    args = parser.parse_args()
    if any("=" not in setting for setting in args.set):
        parser.error("--set takes NAME=VALUE")
    unknown = set(args.faults) - {f.name for f in FAULTS}
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}; see --list")
    return args


def main() -> int:
    if not all((ROOT / "app" / example).is_dir() for example in ("items", "orders")):
        sys.exit(
            "make chaos drives the example resources (app/items, app/orders), which this service "
            "does not have (make init examples=no): point it at your own routes first"
        )
    args = parse_args()
    if args.slowloris:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(slowloris(args.slowloris))
        return 0
    if args.list:
        for fault in FAULTS:
            print(f"{fault.name:<14} {fault.summary}\n{'':<14} bar: {fault.bar.describe()}")
            if fault.audit is not None and fault.audit.__doc__:
                print(f"{'':<14} and: {' '.join(fault.audit.__doc__.split())}")
        return 0
    faults = [f for f in FAULTS if not args.faults or f.name in args.faults]
    # `docker compose down` must run on SIGTERM too (CI cancelling a job), not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))  # the env file, with its secrets
    stack = None
    try:
        stack = Stack(workdir, dict(setting.split("=", 1) for setting in args.set))
        # What an earlier run killed before its teardown left behind: its database volume,
        # initialised with that run's passwords, would refuse this run's migrate.
        stack.down()
        log(f"building {API_IMAGE} and starting project {PROJECT} on port {HTTP_PORT}")
        stack.build_and_up()
        stack.create_api_key()
        stack.issue_token()
        stack.seed()
        results = asyncio.run(run_all(stack, faults, SHORT if args.short else FULL))
    finally:
        if args.keep and stack is not None:
            down = " ".join(stack.compose_command("down", "-v"))
            log(f"left running; remove with: COMPOSE_FILE={stack.env['COMPOSE_FILE']} {down}")
        else:
            if stack is not None:
                log("tearing the stack down")
                stack.down()
            shutil.rmtree(workdir)
    print()
    print_table(results)
    passed = sum(not r.misses for r in results)
    log(f"{passed}/{len(faults)} faults within their bars ({time.monotonic() - started:.0f} s)")
    for problem in stack.write_problems:
        log(f"keyed writes: {problem}")
    return 0 if passed == len(faults) and not stack.write_problems else 1


if __name__ == "__main__":
    sys.exit(main())
