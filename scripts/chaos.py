#!/usr/bin/env python3
"""Fault injection on the production stack (`make chaos`): does the service keep serving?

Starts docker-compose.prod.yml as a Compose project of its own with throw-away secrets,
drives steady load through the proxy (16 keep-alive HTTP/1.1 clients, 5 s timeout), and
injects each fault in turn: a steady phase before, the fault, a steady phase after. For
each fault it prints a per-second ledger and a summary, checks the figures against the
fault's bar (issue 7's table, encoded in FAULTS below), and at the end prints one table.
The stack is torn down whatever happens. Exit status 1 when a fault misses its bar.

    python3 scripts/chaos.py                      # every fault, about 5 minutes
    python3 scripts/chaos.py redis-stop pg-stop   # some of them
    python3 scripts/chaos.py --short              # shorter phases (CI)
    python3 scripts/chaos.py --list               # the faults and their bars

Standard library only (Python 3.11+): besides Docker with Compose v2, nothing to install.
See docs/chaos.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The stack's own names, ports and subnet, apart from `make prod-up` and `make e2e`.
PROJECT = os.environ.get("CHAOS_PROJECT", "fschaos")
HTTP_PORT = int(os.environ.get("CHAOS_HTTP_PORT", "18180"))
HTTPS_PORT = int(os.environ.get("CHAOS_HTTPS_PORT", "18543"))
SUBNET = os.environ.get("CHAOS_SUBNET", "172.30.252.0/24")
PROXY_IP = os.environ.get("CHAOS_PROXY_IP", "172.30.252.10")
API_IMAGE = f"{os.environ.get('SERVICE_NAME', 'app')}:chaos"  # make: pyproject.toml's name

CLIENTS = 16
CLIENT_TIMEOUT = 5.0
ITEMS = 50
TIMEOUT = 0  # the status of a request with no answer within CLIENT_TIMEOUT
FAILED = -1  # the status of a request whose connection was refused, reset or closed
CUT_SHORT = -2  # the status of a response whose head arrived but whose body was cut off
FAILED_PAUSE = 0.1  # how long a client waits after FAILED before its next request


# The stack's settings: throw-away secrets, and the write rate limit off, since one
# client (this script) sends every write and the limit is per client.
def stack_settings() -> dict[str, str]:
    return {
        "DOMAIN": "http://localhost",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "APP_DB_PASSWORD": secrets.token_hex(16),
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
    status: int  # an HTTP status, TIMEOUT or FAILED
    retry_after: bool = False

    @property
    def end(self) -> float:
        return self.start + self.latency


class CutShortError(Exception):
    """The response began (status and headers arrived) and then its connection broke."""


class Connection:
    """One keep-alive HTTP/1.1 connection to the proxy, reopened after any error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def request(
        self, method: str, path: str, body: bytes | None
    ) -> tuple[int, dict[str, str], bytes]:
        if self._streams is None:
            self._streams = await asyncio.open_connection("127.0.0.1", self.port)
        reader, writer = self._streams
        head = f"{method} {path} HTTP/1.1\r\nHost: localhost:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write(head.encode() + b"\r\n" + (body or b""))
        await writer.drain()
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        try:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                content = await read_chunked(reader)
            else:
                content = await reader.readexactly(int(headers.get("content-length", "0")))
        except (OSError, EOFError, ValueError) as exc:
            raise CutShortError from exc
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, content

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


async def send(conn: Connection, request: Request) -> tuple[int, dict[str, str], bytes]:
    """One request within CLIENT_TIMEOUT; (TIMEOUT or FAILED, {}, b"") instead of raising."""
    try:
        return await asyncio.wait_for(conn.request(*request), CLIENT_TIMEOUT)
    except TimeoutError:
        conn.close()
        return TIMEOUT, {}, b""
    except CutShortError:
        conn.close()
        return CUT_SHORT, {}, b""
    except (OSError, EOFError, ValueError, IndexError):  # refused, reset, closed
        conn.close()
        await asyncio.sleep(FAILED_PAUSE)  # a refused connection must not become a busy loop
        return FAILED, {}, b""


class Load:
    """CLIENTS closed-loop clients, each sending its next request when the last is answered."""

    def __init__(self, port: int, next_request: Callable[[], Request]) -> None:
        self.port = port
        self.next_request = next_request
        self.samples: list[Sample] = []
        self.t0 = time.monotonic()
        self._stop = asyncio.Event()

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _client(self) -> None:
        conn = Connection(self.port)
        while not self._stop.is_set():
            start = self.now()
            status, headers, _ = await send(conn, self.next_request())
            self.samples.append(Sample(start, self.now() - start, status, "retry-after" in headers))
        conn.close()

    async def run(self) -> None:
        await asyncio.gather(*(self._client() for _ in range(CLIENTS)))

    def stop(self) -> None:
        self._stop.set()


# --- The stack -----------------------------------------------------------------------


class Stack:
    """docker-compose.prod.yml as project PROJECT. Its settings are in an env file of its
    own (ENV_FILE) and exported too, so that scripts/deploy.sh, run from here, sees them."""

    def __init__(self, workdir: Path) -> None:
        settings = stack_settings()
        env_file = workdir / "chaos.env"
        env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
        self.env = {
            **os.environ,
            **settings,
            "COMPOSE_PROJECT_NAME": PROJECT,
            "COMPOSE_FILE": str(ROOT / "docker-compose.prod.yml"),
            "ENV_FILE": str(env_file),
        }
        # Compose files that do not pass every setting through to the api (env_file)
        # get them from an override, for each api service.
        self.api_services = [
            s for s in self.compose("config", "--services").split() if s.startswith("api")
        ]
        override = workdir / "chaos.override.yml"
        override.write_text(
            "services:\n"
            + "".join(
                f"  {s}:\n    environment:\n      RATE_LIMIT_WRITES: '0'\n"
                for s in self.api_services
            )
        )
        self.env["COMPOSE_FILE"] += f":{override}"
        self.base = f"http://127.0.0.1:{HTTP_PORT}"
        self.items: list[str] = []
        self.holder: subprocess.Popen[str] | None = None  # the session holding a row lock
        self.revision = (
            self.run("git", "rev-parse", "--short", "HEAD", check=False).strip() or "unknown"
        )

    def run(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        """Run a command in the repository with the stack's environment; its stdout."""
        result = subprocess.run(  # noqa: S603  # fixed commands, no shell
            args,
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            command = " ".join(args[:8]) + (" ..." if len(args) > 8 else "")
            last_lines = "\n".join(result.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"{command} failed:\n{last_lines}")
        return result.stdout if result.returncode == 0 else ""

    def compose_command(self, *args: str) -> list[str]:
        # --env-file: never the checkout's own .env, which may belong to another stack.
        return ["docker", "compose", "-p", PROJECT, "--env-file", self.env["ENV_FILE"], *args]

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        return self.run(*self.compose_command(*args), timeout=timeout, check=check)

    def build(self, revision: str) -> None:
        # Every api service and migrate run this one image.
        self.compose(
            "build", "--build-arg", f"REVISION={revision}", self.api_services[0], timeout=900
        )

    def up(self) -> None:
        self.compose("up", "--detach", "--wait", "--wait-timeout", "180", timeout=300)

    def down(self) -> None:
        if self.holder is not None:
            self.holder.kill()
        self.compose("unpause", "db", "redis", check=False)  # a paused container cannot stop
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "5", check=False)

    def http(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A request outside the load (setup, readiness); the decoded JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310  # our own http://localhost
        request.add_header("Content-Type", "application/json")
        request.add_header("Host", f"localhost:{HTTP_PORT}")  # the proxy's site is localhost
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
        """Whether `command`, run in `service`, succeeds: the service is back for its clients."""
        return self.compose("exec", "-T", service, *command, timeout=10, check=False) != ""

    def wait_db(self) -> None:
        self.wait_until("postgres", lambda: self.answers("db", "pg_isready", "-d", "app"))

    def wait_redis(self) -> None:
        self.wait_until("redis", lambda: self.answers("redis", "redis-cli", "ping"))

    def api_ready(self) -> bool:
        try:
            return bool(self.http("GET", "/health/ready")["status"] == "pass")
        except (OSError, ValueError):  # URLError and HTTPError are OSErrors
            return False

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


# --- Faults: how to cause each one and undo it ----------------------------------------


def nothing(_: Stack) -> None:
    pass


def stop_redis(stack: Stack) -> None:
    stack.compose("stop", "redis")


def start_redis(stack: Stack) -> None:
    stack.compose("start", "redis")
    stack.wait_redis()


def pause_redis(stack: Stack) -> None:
    stack.compose("pause", "redis")


def unpause_redis(stack: Stack) -> None:
    stack.compose("unpause", "redis")
    stack.wait_redis()


def restart_db(stack: Stack) -> None:
    stack.compose("restart", "db")


def stop_db(stack: Stack) -> None:
    stack.compose("stop", "db")


def start_db(stack: Stack) -> None:
    stack.compose("start", "db")
    stack.wait_db()


def db_back(stack: Stack) -> None:
    stack.wait_db()


def pause_db(stack: Stack) -> None:
    stack.compose("pause", "db")


def unpause_db(stack: Stack) -> None:
    stack.compose("unpause", "db")
    stack.wait_db()


# psql as the database's superuser, whichever name the compose file gives it.
PSQL = ["sh", "-c", 'exec psql -U "$POSTGRES_USER" -d app "$@"', "psql"]


def lock_items(stack: Stack) -> None:
    """Hold a lock on every item's row, from a psql session of our own. Every item: the
    clients patch random ones, so that they do not queue behind each other's locks."""
    stack.holder = subprocess.Popen(  # noqa: S603  # fixed command, no shell
        stack.compose_command("exec", "-T", "db", *PSQL, "-q"),
        cwd=ROOT,
        env=stack.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
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
    killed = stack.compose("exec", "-T", stack.api_services[0], "python", "-c", KILL_A_WORKER)
    log(f"{stack.api_services[0]}: {killed.strip()}")


DEPLOY_SCRIPT = ROOT / "scripts" / "deploy.sh"


def deploy(stack: Stack) -> None:
    """Roll the api to a new build: scripts/deploy.sh, or else what `make prod-up` does."""
    stack.revision += "-redeployed"  # a new image, as a new version would be
    stack.env["REVISION"] = stack.revision  # scripts/deploy.sh's build argument
    if DEPLOY_SCRIPT.exists():
        log("deploying with scripts/deploy.sh")
        stack.run(str(DEPLOY_SCRIPT), timeout=600)
    else:
        log("no scripts/deploy.sh: deploying as `make prod-up` does (build, then up)")
        stack.build(stack.revision)
        try:
            stack.up()
        except RuntimeError:
            print(stack.compose("logs", "--no-color", "--tail", "15", "migrate", check=False))
            raise


# --- Bars: what each fault may cost (issue 7's "must be" column) -----------------------


@dataclass(frozen=True)
class Bar:
    """What a fault may cost at most. A check left None is not made. A timeout or a failed
    connection is never an allowed answer."""

    # Answers allowed from the fault until `settle_s` after recovery; 200 only after that.
    statuses: frozenset[int] = frozenset({200})
    settle_s: float = 0.0
    retry_after: bool = False  # every 503 carries Retry-After
    min_ratio: float | None = None  # throughput during the fault / before it
    added_p99_ms: float | None = None  # p99 latency during the fault - before it
    max_latency_s: float | None = None  # every answer during the fault within this
    readiness: str | None = None  # /health/ready's status in the middle of the fault
    # Responses cut off mid-body allowed until this long after the fault was injected.
    # A proxy can resend a request whose response never began, never one the client has
    # begun to receive: a worker killed while sending a response breaks that response.
    cut_short_s: float | None = None

    def describe(self) -> str:
        parts = ["/".join(map(str, sorted(self.statuses))) + " only"]
        if self.retry_after:
            parts[0] += ", 503s with Retry-After"
        if self.min_ratio is not None:
            parts.append(f"≥ {self.min_ratio}x throughput")
        if self.added_p99_ms is not None:
            parts.append(f"p99 ≤ +{self.added_p99_ms:.0f} ms")
        if self.max_latency_s is not None:
            parts.append(f"each ≤ {self.max_latency_s:.0f} s")
        if self.settle_s:
            parts.append(f"all 200 {self.settle_s:.0f} s after")
        if self.readiness:
            parts.append(f"ready: {self.readiness}")
        if self.cut_short_s is not None:
            parts.append(f"responses cut off within {self.cut_short_s:.0f} s of the fault allowed")
        return "; ".join(parts)


REDIS_OPTIONAL = Bar(min_ratio=0.5, added_p99_ms=100, readiness="warn")
DB_UNAVAILABLE = Bar(statuses=frozenset({200, 503}), settle_s=5, retry_after=True)


@dataclass(frozen=True)
class Fault:
    name: str
    summary: str
    workload: Callable[[Stack], Request]
    inject: Callable[[Stack], None]
    recover: Callable[[Stack], None]  # returns once the dependency is back
    bar: Bar
    hold_s: float = 10.0  # how long the fault lasts between inject and recover


FAULTS = [
    Fault(
        name="redis-stop",
        summary="Redis stopped (cached item reads)",
        workload=cached_read,
        inject=stop_redis,
        recover=start_redis,
        bar=REDIS_OPTIONAL,
        hold_s=12,
    ),
    Fault(
        name="redis-pause",
        summary="Redis paused: alive but silent (cached item reads)",
        workload=cached_read,
        inject=pause_redis,
        recover=unpause_redis,
        bar=REDIS_OPTIONAL,
    ),
    Fault(
        name="pg-restart",
        summary="Postgres restarted (list)",
        workload=list_read,
        inject=restart_db,
        recover=db_back,
        bar=DB_UNAVAILABLE,
        hold_s=0,
    ),
    Fault(
        name="pg-stop",
        summary="Postgres stopped for 10 s (list)",
        workload=list_read,
        inject=stop_db,
        recover=start_db,
        bar=replace(DB_UNAVAILABLE, max_latency_s=2),
    ),
    Fault(
        name="pg-pause",
        summary="Postgres paused: alive but silent (list)",
        workload=list_read,
        inject=pause_db,
        recover=unpause_db,
        bar=DB_UNAVAILABLE,
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
        inject=kill_worker,
        recover=nothing,  # Gunicorn's master starts a new worker by itself
        # The proxy retries the killed worker's idempotent requests, except those whose
        # response it had begun to forward (the same rule as make deploy-check's).
        bar=Bar(cut_short_s=1.0),
        hold_s=5,
    ),
    Fault(
        name="deploy",
        summary="a deploy of a new build (cached item reads)",
        workload=cached_read,
        inject=deploy,
        recover=nothing,
        bar=Bar(),  # zero failed requests
        hold_s=0,
    ),
]


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
    readiness: str | None = None
    error: str | None = None
    misses: list[str] = field(default_factory=list)

    def window(self, start: float, end: float) -> list[Sample]:
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


async def readiness_in(port: int, delay: float) -> str:
    await asyncio.sleep(delay)
    status, _, body = await send(Connection(port), ("GET", "/health/ready", None))
    try:
        return str(json.loads(body)["status"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {status}" if status > 0 else "no answer"


async def run_fault(stack: Stack, fault: Fault, phases: Phases) -> Result:
    """Load before, during and after the fault; the samples and the fault's timeline."""
    await asyncio.to_thread(stack.warm)
    load = Load(HTTP_PORT, lambda: fault.workload(stack))
    clients = asyncio.create_task(load.run())
    hold = fault.hold_s * phases.hold_scale
    error = readiness = None
    try:
        await asyncio.sleep(phases.before_s)
        inject_at = injected_at = load.now()
        try:
            await asyncio.to_thread(fault.inject, stack)
            injected_at = load.now()
            probe = asyncio.create_task(readiness_in(HTTP_PORT, hold / 2))
            await asyncio.sleep(hold)
            readiness = await probe
        except (RuntimeError, subprocess.SubprocessError) as exc:
            error = f"inject: {exc}"
        await asyncio.to_thread(fault.recover, stack)
        back_at = load.now()
        await asyncio.sleep(phases.after_s)
        end_at = load.now()
    finally:
        load.stop()
        await clients
    return Result(fault, load.samples, inject_at, injected_at, back_at, end_at, readiness, error)


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
    if not result.before or any(s.status != 200 for s in result.before):
        misses.append(f"the stack was not healthy before the fault: {tally(result.before)}")
    settled = result.back_at + bar.settle_s
    fault_on = result.fault_on
    cut_short_until = result.injected_at + (bar.cut_short_s or 0.0)
    wrong = [
        s
        for s in fault_on
        if s.status not in (bar.statuses if s.start < settled else {200})
        and not (bar.cut_short_s is not None and s.status == CUT_SHORT and s.end <= cut_short_until)
    ]
    if wrong:
        misses.append(f"answers outside the bar: {tally(wrong)}")
    if bar.retry_after and (bare := [s for s in fault_on if s.status == 503 and not s.retry_after]):
        misses.append(f"{len(bare)} x 503 without Retry-After")
    before_rate = result.rate(0, result.inject_at)
    during_rate = result.rate(result.inject_at, result.back_at)
    if bar.min_ratio is not None and during_rate < bar.min_ratio * before_rate:
        misses.append(
            f"throughput {during_rate / before_rate:.2f}x before (bar ≥ {bar.min_ratio}x)"
        )
    added_ms = (p99(result.during) - p99(result.before)) * 1000
    if bar.added_p99_ms is not None and added_ms > bar.added_p99_ms:
        misses.append(f"p99 latency +{added_ms:.0f} ms (bar ≤ +{bar.added_p99_ms:.0f} ms)")
    worst = max((s.latency for s in result.during), default=0.0)
    if bar.max_latency_s is not None and worst > bar.max_latency_s:
        misses.append(f"slowest answer {worst:.1f} s (bar ≤ {bar.max_latency_s:.0f} s)")
    if bar.readiness is not None and result.readiness != bar.readiness:
        misses.append(f"readiness said {result.readiness} (bar: {bar.readiness})")
    return misses


# --- Reporting ---------------------------------------------------------------------------


def print_ledger(result: Result) -> None:
    """One line per second: requests started that second, their answers and latencies."""
    names = sorted(
        {status_name(s.status) for s in result.samples}, key=lambda n: (not n.isdigit(), n)
    )
    print(
        f"{'t':>4} {'phase':<6} {'req':>5} "
        + " ".join(f"{n:>7}" for n in names)
        + "   p50 ms   max ms"
    )
    for second in range(int(result.end_at)):  # whole seconds only
        samples = result.window(second, second + 1)
        phase = (
            "before"
            if second < int(result.inject_at)
            else "fault"
            if second < result.back_at
            else "after"
        )
        counts = Counter(status_name(s.status) for s in samples)
        latencies = sorted(s.latency for s in samples) or [float("nan")]  # none started
        p50, worst = latencies[len(latencies) // 2] * 1000, latencies[-1] * 1000
        cells = " ".join(f"{counts.get(n, 0):>7}" for n in names)
        print(f"{second:>4} {phase:<6} {len(samples):>5} {cells} {p50:>8.0f} {worst:>8.0f}")


def summary_row(result: Result) -> list[str]:
    before = result.rate(0, result.inject_at)
    during = result.rate(result.inject_at, result.back_at)
    after = result.rate(result.back_at, result.end_at)
    fault_on = result.fault_on
    non_200 = [s for s in fault_on if s.status not in (200, TIMEOUT)]
    worst = max((s.latency for s in fault_on), default=0.0)
    return [
        result.fault.name,
        f"{before:.0f}",
        f"{during:.0f} ({during / before:.2f}x)" if before else f"{during:.0f}",
        f"{after:.0f}",
        f"{result.back_at - result.inject_at:.1f} s",
        tally(non_200) if non_200 else "-",
        str(sum(s.status == TIMEOUT for s in fault_on)),
        f"{worst:.2f} s",
        "PASS" if not result.misses else "MISS",
    ]


HEADER = [
    "fault",
    "before r/s",
    "during r/s",
    "after r/s",
    "fault lasted",
    "non-200 (during + after)",
    "timeouts",
    "slowest",
    "bar",
]


def print_table(results: list[Result]) -> None:
    """A Markdown table, ready to paste into docs/chaos.md."""
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
    """Each fault in turn. A stack that does not recover stops the run: later faults
    would measure the wreck of an earlier one."""
    results = []
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
    return results


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("faults", nargs="*", metavar="FAULT", help="faults to run (default: all)")
    parser.add_argument("--short", action="store_true", help="shorter phases, for CI")
    parser.add_argument("--list", action="store_true", help="list the faults and their bars")
    parser.add_argument("--keep", action="store_true", help="leave the stack up, to look into it")
    args = parser.parse_args()
    unknown = set(args.faults) - {f.name for f in FAULTS}
    if unknown:
        parser.error(f"unknown fault(s): {', '.join(sorted(unknown))}; see --list")
    return args


def main() -> int:
    args = parse_args()
    if args.list:
        for fault in FAULTS:
            print(f"{fault.name:<12} {fault.summary}\n{'':<12} bar: {fault.bar.describe()}")
        return 0
    faults = [f for f in FAULTS if not args.faults or f.name in args.faults]
    # `docker compose down` must run on SIGTERM too (CI cancelling a job), not only on Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="chaos-"))  # the env file, with its secrets
    stack = None
    try:
        stack = Stack(workdir)
        # What an earlier run killed before its teardown left behind: its database volume,
        # initialised with that run's passwords, would refuse this run's migrate.
        stack.down()
        log(f"building {API_IMAGE} and starting project {PROJECT} on port {HTTP_PORT}")
        stack.build(stack.revision)
        stack.up()
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
    elapsed = time.monotonic() - started
    log(f"{passed}/{len(faults)} faults within their bars ({elapsed:.0f} s)")
    return 0 if passed == len(faults) else 1


if __name__ == "__main__":
    sys.exit(main())
