#!/usr/bin/env python3
"""Throughput of the production image against plain FastAPI, side by side in one run.

    scripts/bench.py              # build, measure, print the table, check the bars
    scripts/bench.py profile ROW  # py-spy flame graph of the app under load (PROFILE_SECONDS)

Settings (environment): BENCH_SHORT=1 (a few seconds a row), BENCH_ROWS=health,page
(only those rows), BENCH_STRICT=0 (report missed bars without failing; over 1 % errors
always fails), BENCH_ROUNDS, BENCH_SECONDS, BENCH_WARMUP_SECONDS, BENCH_CPUS (each
server's CPU limit, default 2), BENCH_IMAGE (an image built elsewhere; skips the build),
BENCH_KEEP=1 (leave the stack running), BENCH_JOBS (no-op jobs a round),
BENCH_WRITE_ROUNDS, BENCH_WRITE_SECONDS (the close pairs: the creates, the orders).
docs/benchmarks.md says how it measures. Standard library only: runs on the host's python3.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
COMPOSE = ("docker", "compose", "-f", str(ROOT / "bench" / "compose.yml"))
IMAGE = f"{os.environ.get('SERVICE_NAME', 'app')}:bench"  # make: pyproject.toml's name
PY_SPY_IMAGE = "fsbench-py-spy:local"
SEED_ITEMS = 1000
# Orders for one item would all lock that row (the foreign key's check): spread over
# these many, the order rows measure the writes, not a queue on one hot row.
ORDERED_ITEMS = 100


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


SHORT = os.environ.get("BENCH_SHORT") == "1"
STRICT = os.environ.get("BENCH_STRICT", "1") != "0"
ROUNDS = env_int("BENCH_ROUNDS", 2 if SHORT else 3)
SECONDS = env_int("BENCH_SECONDS", 3 if SHORT else 10)
WARMUP_SECONDS = env_int("BENCH_WARMUP_SECONDS", 2 if SHORT else 5)
JOBS = env_int("BENCH_JOBS", 5_000 if SHORT else 20_000)
# The close pairs (the creates, the orders), each two variants close in cost: more,
# shorter rounds, and the median.
WRITE_ROUNDS = env_int("BENCH_WRITE_ROUNDS", 7 if SHORT else 9)
WRITE_SECONDS = env_int("BENCH_WRITE_SECONDS", 3 if SHORT else 5)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    server: str  # the compose service that answers
    path: str = ""  # {id} is replaced by a seeded item's id
    script: str = ""  # a wrk Lua script in bench/, then its arguments
    bearer: bool = False  # send a JWT (Authorization: Bearer) instead of an X-API-Key
    # Instead of wrk: bench/jobs.py's command; {id}, {jobs} and {seconds} are filled in.
    driver: str = ""
    connections: int = 64  # wrk's, in flight at once

    # One of a pair so close in cost that a best round would mostly measure the noise
    # (a create with its key and without, an order with its job and without): more,
    # shorter rounds, the median kept.
    close_pair: bool = False


# A create holds a pooled connection for its whole transaction: past the servers' pools
# (2 workers x DB_POOL_SIZE 10), requests queue for one, and on a busy machine a few wait
# out DB_POOL_TIMEOUT and get a 503, the app shedding load as designed. The creates keep
# the pools busy with a short queue instead: their rate, not the shedding, is measured.
WRITERS = 32
WRITE_ON, WRITE_OFF = "write on {id} {seconds}", "write off {id} {seconds}"
PAGE = "/api/v1/items?limit=20"
ITEM = "/api/v1/items/{id}"
ITEMS = "/api/v1/items"
ORDERS = "/api/v1/orders"

# A fork adds its own routes here (and a service in bench/compose.yml for another setting).
# Reads first, the creates last: they grow the table the page rows read.
ROWS = (
    Row("floor-health", "minimal FastAPI, /health", "floor-health", "/health"),
    Row("health", "GET /health", "app", "/health"),
    Row("metrics", "GET /health, metrics on", "metrics", "/health"),
    Row("floor-page", "minimal FastAPI + SQLAlchemy page", "floor-data", PAGE),
    Row("page", f"GET {PAGE}", "app", PAGE),
    Row("floor-read", "minimal FastAPI + SQLAlchemy read", "floor-data", ITEM),
    Row("item", f"GET {ITEM}, cached", "app", ITEM),
    # Both send the same token, so they differ only in its check (bench/unauthenticated.py).
    Row("item-open", "cached read, no authentication", "unauthenticated", ITEM, bearer=True),
    Row("item-bearer", "cached read, bearer token", "app", ITEM, bearer=True),
    # A create with its Idempotency-Key and without: a close pair, as the orders are.
    Row(
        *("create", f"POST {ITEMS}", "app", ITEMS),
        script="create.lua",
        connections=WRITERS,
        close_pair=True,
    ),
    Row(
        *("create-keyed", f"POST {ITEMS}, Idempotency-Key", "app", ITEMS),
        script="create.lua keyed",
        connections=WRITERS,
        close_pair=True,
    ),
    Row("jobs-drain", "no-op jobs/s, a backlog drained", "jobs", driver="drain {jobs}"),
    Row("jobs-live", "no-op jobs/s, enqueued as it runs", "jobs", driver="live {jobs}"),
    # An order request enqueues its confirmation job; the reference switches that off.
    Row(
        *("order", f"POST {ORDERS}", "app", ORDERS),
        script="order.lua {ids}",
        connections=WRITERS,
        close_pair=True,
    ),
    Row(
        *("order-jobless", f"POST {ORDERS}, no job enqueued", "jobless", ORDERS),
        script="order.lua {ids}",
        connections=WRITERS,
        close_pair=True,
    ),
    # The same pair as a transaction alone, without HTTP's costs around it: the enqueue's
    # own share, larger than a request's (a diagnostic, with no bar of its own).
    Row(
        *("order-write", "order write, its job enqueued (tx/s)", "jobs"),
        driver=WRITE_ON,
        close_pair=True,
    ),
    Row(
        *("order-write-bare", "order write, no enqueue (tx/s)", "jobs"),
        driver=WRITE_OFF,
        close_pair=True,
    ),
)
# Each close pair's rows, printed side by side round by round.
CLOSE_PAIRS = (
    ("create-keyed", "create"),
    ("order", "order-jobless"),
    ("order-write", "order-write-bare"),
)


@dataclass(frozen=True)
class Bar:
    label: str
    row: str
    reference: str
    at_least: float  # row's requests/s over the reference's


BARS = (
    Bar("/health >= 0.85 x minimal FastAPI", "health", "floor-health", 0.85),
    Bar("page >= 1.0 x minimal page", "page", "floor-page", 1.0),
    Bar("cached read >= 2 x uncached read", "item", "floor-read", 2.0),
    Bar("metrics on >= 0.9 x metrics off", "metrics", "health", 0.9),
    Bar("a keyed create >= 0.9 x a create", "create-keyed", "create", 0.9),
    Bar("bearer read >= 0.8 x unauthenticated", "item-bearer", "item-open", 0.8),
    Bar("an order + its job >= 0.9 x order alone", "order", "order-jobless", 0.9),
)
# A floor must answer what its app row answers, byte for byte, or the rows are not
# comparable (and the floor would silently drift from the app).
SAME_BODY = (("floor-page", "page"), ("floor-read", "item"))


@dataclass
class Measurement:
    rps: float  # requests, jobs or transactions a second
    p50_ms: float | None  # None: a drained backlog, where latency means nothing
    p99_ms: float | None
    requests: int
    errors: int  # socket errors and non-2xx/3xx responses; failed jobs or transactions


@dataclass
class RowResult:
    row: Row
    rounds: list[Measurement] = field(default_factory=list)

    @property
    def kept(self) -> Measurement:
        """The best round; for a close pair's rows, the round of median rate."""
        ordered = sorted(self.rounds, key=lambda m: m.rps)
        return ordered[(len(ordered) - 1) // 2] if self.row.close_pair else ordered[-1]


@dataclass(frozen=True)
class Target:
    """What the load needs from the started stack."""

    item_id: str  # a seeded item
    item_ids: list[str]  # the first ORDERED_ITEMS seeded, which the order rows spread over
    api_key: str  # every /api/v1 route needs one (docs/auth.md)
    token: str  # for the bearer rows
    addresses: dict[str, str]  # each service's

    def url(self, row: Row) -> str:
        return f"http://{self.addresses[row.server]}:8000{row.path.replace('{id}', self.item_id)}"

    def header(self, row: Row) -> str:
        # The floors get it too (and ignore it): every row sends the same request bytes.
        return f"Authorization: Bearer {self.token}" if row.bearer else f"X-API-Key: {self.api_key}"


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(*args: str, stdin: str | None = None, check: bool = True) -> str:
    """Run a command, return its stdout; fail with its output unless check=False."""
    result = subprocess.run(  # noqa: S603  # fixed docker and git commands, no shell
        args, cwd=ROOT, input=stdin, capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise subprocess.CalledProcessError(result.returncode, args)
    return result.stdout


def compose(*args: str, stdin: str | None = None, check: bool = True) -> str:
    return run(*COMPOSE, *args, stdin=stdin, check=check)


@contextmanager
def stack(services: list[str]) -> Iterator[Target]:
    """The stack started, migrated, seeded and its credentials made; removed on the way out
    (BENCH_KEEP=1: left running), after saving its state and logs if anything failed."""
    failed = True
    try:
        if "BENCH_IMAGE" not in os.environ:
            log(f"building the production image as {IMAGE}")
            run("docker", "build", "-q", "-t", IMAGE, ".")
        compose("build", "-q", "wrk")
        log("starting Postgres and Redis, running the migrations")
        compose("up", "-d", "--wait", "db", "redis")
        compose("run", "--rm", "--no-deps", "app", "alembic", "upgrade", "head")
        log(f"starting {', '.join(services)}")
        compose("up", "-d", "--wait", *services, "wrk")
        api_key = make_api_key()
        log(f"seeding {SEED_ITEMS} items")
        seed = ("exec", "-T", "app", "python", "-", str(SEED_ITEMS), api_key)
        ids = compose(*seed, stdin=(ROOT / "bench" / "seed.py").read_text()).split()
        yield Target(ids[0], ids[:ORDERED_ITEMS], api_key, make_token(), addresses())
        failed = False
    finally:
        if failed:
            RESULTS.mkdir(exist_ok=True)
            path = RESULTS / "failed-run.log"
            logs = ("logs", "--no-color", "--tail", "200")
            path.write_text(compose("ps", "-a", check=False) + compose(*logs, check=False))
            log(f"the stack's state and logs: {path.relative_to(ROOT)}")
        if os.environ.get("BENCH_KEEP") == "1":
            log("BENCH_KEEP=1: the stack is left running; `make bench-down` removes it")
        else:
            compose("down", "-v", "-t", "5", check=False)


def addresses() -> dict[str, str]:
    """wrk is given addresses, not names: Docker's DNS, slow on a busy machine, would
    otherwise fail a run now and then."""
    template = (
        '{{index .Config.Labels "com.docker.compose.service"}}'
        " {{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
    )
    output = run("docker", "inspect", "-f", template, *compose("ps", "-q").split())
    return {name: address for name, address in (line.split() for line in output.splitlines())}


def make_api_key() -> str:
    """Made in the app's container as an operator would: no identity provider here."""
    scopes = ("items:read", "items:write", "orders:read", "orders:write")
    command = ("python", "-m", "app.core.auth.keys", "create", f"bench-{uuid.uuid4().hex[:8]}")
    return compose("exec", "-T", "app", *command, *scopes).strip()


def make_token() -> str:
    """From the stack's issuer, with the bearer rows' scope, valid longer than any run."""
    command = (
        "python /issuer/dev_issuer.py --keys /keys --issuer https://issuer:8443 token"
        " --audience bench --scopes items:read --sub bench --ttl 14400"
    )
    return compose("exec", "-T", "issuer", *command.split()).strip()


FETCH = """
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"X-API-Key": sys.argv[2]})
sys.stdout.buffer.write(urllib.request.urlopen(request, timeout=10).read())
"""


def check_same_bodies(rows: list[Row], target: Target) -> None:
    by_key = {row.key: row for row in ROWS}
    measured = {row.key for row in rows}
    for floor, row in SAME_BODY:
        if floor in measured or row in measured:
            fetch = ("exec", "-T", "app", "python", "-c", FETCH)
            urls = (target.url(by_key[key]) for key in (floor, row))
            bodies = [compose(*fetch, url, target.api_key) for url in urls]
            if bodies[0] != bodies[1]:
                raise SystemExit(f"bench: {floor} and {row} answer different bodies:\n{bodies}")
            log(f"{floor} answers {row}'s body byte for byte ({len(bodies[0])} bytes)")


def wrk_args(row: Row, target: Target, seconds: int) -> list[str]:
    # With a script, wrk keeps -H's headers in wrk.headers, beside the script's own.
    args = ["wrk", "-t2", f"-c{row.connections}", f"-d{seconds}s", "-H", target.header(row)]
    script, *script_args = (row.script or "report.lua").split()
    args += ["-s", f"/bench/{script}", target.url(row)]
    if row.script:
        prefix = uuid.uuid4().hex[:8]  # create.lua's names: unique to this run
        for arg in script_args:  # {ids}: every id the order rows spread over
            prefix += " " + (" ".join(target.item_ids) if arg == "{ids}" else arg)
        args += ["--", *prefix.split()]
    return args


def one_round(row: Row, target: Target, seconds: int) -> Measurement:
    """A round of wrk, or of bench/jobs.py: each prints its result last, after a marker."""
    if row.driver:
        command = row.driver.format(id=target.item_id, jobs=JOBS, seconds=seconds).split()
        output = compose("exec", "-T", "jobs", "python", "/bench/jobs.py", *command)
    else:
        output = compose("exec", "-T", "wrk", *wrk_args(row, target, seconds))
    result = json.loads(output.rsplit("bench-result ", 1)[1])
    if "enqueue_rate" in result:
        log(f"{row.key}: enqueued at {result['enqueue_rate']:,.0f}/s")
    if "timeouts" in result and result["errors"]:  # wrk's: which errors they were
        statuses, timeouts = result["non_2xx_3xx"], result["timeouts"]
        others = result["errors"] - statuses - timeouts
        log(f"{row.key} errors: {statuses} non-2xx/3xx, {timeouts} timeouts (2 s), {others} other")
    return Measurement(**{f.name: result[f.name] for f in fields(Measurement)})


def measure(rows: list[Row], target: Target) -> dict[str, RowResult]:
    results = {row.key: RowResult(row) for row in rows}
    reads = [row for row in rows if not row.driver and not row.close_pair]
    jobs = [row for row in rows if row.driver and not row.close_pair]
    # After the job rows: the orders leave jobs no worker takes, which the drain must not see.
    pairs = [row for row in rows if row.close_pair]
    for group, rounds, seconds in (
        (reads, ROUNDS, SECONDS),
        (jobs, ROUNDS, SECONDS),  # each round a fresh start of its own: no warm-up
        (pairs, WRITE_ROUNDS, WRITE_SECONDS),
    ):
        if group and group is not jobs:
            log(f"warm-up, {WARMUP_SECONDS} s a row: {', '.join(r.key for r in group)}")
            for row in group:
                one_round(row, target, WARMUP_SECONDS)
        for number in range(1, rounds + 1):
            # Every other round in reverse: no row always runs right after the same one.
            for row in group if number % 2 else reversed(group):
                measured = one_round(row, target, seconds)
                results[row.key].rounds.append(measured)
                unit = "requests/s" if not row.driver else "tx/s" if row.close_pair else "jobs/s"
                log(f"round {number} {row.key:16} {measured.rps:9,.0f} {unit}")
    for with_job, alone in CLOSE_PAIRS:
        if with_job in results and alone in results:
            side_by_side = zip(results[with_job].rounds, results[alone].rounds, strict=True)
            ratios = ", ".join(f"{a.rps / b.rps:.3f}" for a, b in side_by_side)
            log(f"{with_job} over {alone}, round by round: {ratios}")
    return results


def check_bars(kept: dict[str, Measurement]) -> list[dict[str, Any]]:
    checked = []
    for bar in BARS:
        row, reference = kept.get(bar.row), kept.get(bar.reference)
        ratio = row.rps / reference.rps if row and reference and reference.rps else None
        met = None if ratio is None else round(ratio, 3) >= bar.at_least
        checked.append({**asdict(bar), "ratio": ratio, "met": met})
    return checked


def print_table(results: dict[str, RowResult], bars: list[dict[str, Any]]) -> None:
    print(f"\n{'':40} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for result in results.values():
        kept = result.kept
        p50, p99 = (
            f"{'-':>8}" if ms is None else f"{ms:8.2f}" for ms in (kept.p50_ms, kept.p99_ms)
        )
        print(f"{result.row.label:40} {kept.rps:10,.0f} {p50} {p99} {kept.errors:6}")
    print()
    for bar in bars:
        if bar["met"] is None:
            print(f"  --    {bar['label']:36} (row not measured)")
        else:
            mark = "ok  " if bar["met"] else "MISS"
            print(f"  {mark}  {bar['label']:36} {bar['ratio']:.3f} (bar {bar['at_least']:.2f})")
    print(f"\n  {ROUNDS} rounds x {SECONDS} s, best kept; rev {revision()}")
    if any(r.row.close_pair or r.row.driver for r in results.values()):
        print(
            f"  jobs/s: {JOBS:,} no-op jobs a round, best kept; the close pairs: "
            f"{WRITE_ROUNDS} alternating rounds x {WRITE_SECONDS} s, median kept"
        )


def revision() -> str:
    try:
        rev = run("git", "rev-parse", "--short", "HEAD").strip()
        dirty = run("git", "status", "--porcelain", "--", "app", "bench", "Dockerfile")
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return rev + ("-dirty" if dirty.strip() else "")


def bench() -> int:
    wanted = [key for key in os.environ.get("BENCH_ROWS", "").split(",") if key]
    rows = [row for row in ROWS if row.key in wanted] if wanted else list(ROWS)
    servers = list(dict.fromkeys([*(row.server for row in rows), "app"]))  # app takes the seed
    with stack(servers) as target:
        check_same_bodies(rows, target)
        results = measure(rows, target)
    bars = check_bars({key: result.kept for key, result in results.items()})
    RESULTS.mkdir(exist_ok=True)
    summary = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "revision": revision(),
        "rows": {key: [asdict(m) for m in r.rounds] for key, r in results.items()},
        "bars": bars,
    }
    (RESULTS / "latest.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(results, bars)
    # More than 1 % errors means a broken server, not a slow one: fail even when
    # BENCH_STRICT=0 only reports the ratio bars.
    errors = [
        f"{key}: {r.kept.errors} errors"
        for key, r in results.items()
        if r.kept.errors > r.kept.requests / 100
    ]
    if errors:
        print(f"\nbench: errors: {'; '.join(errors)}")
        return 1
    missed = [bar["label"] for bar in bars if bar["met"] is False]
    if missed and STRICT:
        print(f"\nbench: missed: {'; '.join(missed)} (BENCH_STRICT=0 to report only)")
        return 1
    return 0


def profile(key: str) -> int:
    """Load one of the app's rows with wrk and record the app with py-spy from a sidecar."""
    row = next(row for row in ROWS if row.key == key and row.server == "app")
    seconds = env_int("PROFILE_SECONDS", 20)
    RESULTS.mkdir(exist_ok=True)
    run("docker", "build", "-q", "-t", PY_SPY_IMAGE, "-f", "bench/py-spy.Dockerfile", "bench")
    with stack(["app"]) as target:
        # Longer than the recording and its sidecar's start; stopped with the stack.
        args = wrk_args(row, target, seconds + 120)
        load = subprocess.Popen(  # noqa: S603  # a fixed docker command, no shell
            [*COMPOSE, "exec", "-T", "wrk", *args], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        time.sleep(WARMUP_SECONDS)
        log(f"py-spy: {seconds} s of {row.path}")
        container = compose("ps", "-q", "app").strip()
        out = f"/out/profile-{key}.svg"
        # py-spy runs as root to use SYS_PTRACE; the file is handed back to you.
        run(
            *("docker", "run", "--rm", "--pid", f"container:{container}"),
            *("--cap-add", "SYS_PTRACE", "-v", f"{RESULTS}:/out", "--entrypoint", "sh"),
            PY_SPY_IMAGE,
            "-c",
            f"py-spy record --pid 1 --subprocesses --nonblocking --rate 200 "
            f"--duration {seconds} -f flamegraph -o {out} >/dev/null; "
            f"chown {os.getuid()}:{os.getgid()} {out}",
        )
        load.terminate()
    print(f"  flame graph: bench/results/profile-{key}.svg")
    return 0


def main() -> int:
    if not all((ROOT / "app" / example).is_dir() for example in ("items", "orders")):
        sys.exit(
            "make bench drives the example resources (app/items, app/orders), which this service "
            "does not have (make init examples=no): point it at your own routes first"
        )
    # Stopped from outside (CI's timeout, kill): still remove the stack on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = sys.argv[1] if len(sys.argv) > 1 else "run"
    if mode == "run":
        return bench()
    if mode == "profile":
        return profile(sys.argv[2] if len(sys.argv) > 2 else "health")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
