#!/usr/bin/env python3
"""Throughput of the production image against plain FastAPI, side by side in one run.

    scripts/bench.py                       # build, measure, print the table, check the bars
    scripts/bench.py profile [health|item|page|create]  # py-spy flame graph under load

Every server runs the production image with the same environment, 2 workers and the
same CPU limit (bench/compose.yml); wrk loads one at a time from a container on the
same network. Rows are interleaved round by round (in reverse order every other round),
so a noisy neighbour slows all of them alike, and each row keeps its best round. The
bars are ratios to the floors (bench/floors.py: what plain FastAPI serves here), which
hold from one machine to another; absolute figures do not. docs/benchmarks.md has them.
The job rows run bench/jobs.py in the `jobs` container instead of wrk: a no-op job's
throughput through the app's worker, and the orders service's create transaction with
and without its enqueue (alternating rounds, medians kept).

Settings (environment): BENCH_SHORT=1 (a few seconds a row), BENCH_ROWS=health,page
(only those rows), BENCH_STRICT=0 (report missed bars without failing; over 1 % errors
always fails), BENCH_ROUNDS, BENCH_SECONDS, BENCH_WARMUP_SECONDS, BENCH_CPUS (each
server's CPU limit, default 2), BENCH_IMAGE (an image built elsewhere; skips the build),
BENCH_KEEP=1 (leave the stack running), BENCH_JOBS (no-op jobs a round), BENCH_WRITE_ROUNDS,
BENCH_WRITE_SECONDS (the order write rows). Standard library only: runs on the host's python3.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
COMPOSE = ["docker", "compose", "-f", str(BENCH / "compose.yml")]
IMAGE = f"{os.environ.get('SERVICE_NAME', 'app')}:bench"  # make: pyproject.toml's name
PY_SPY_IMAGE = "fsbench-py-spy:local"
THREADS, CONNECTIONS = 2, 64
ISSUER = "https://issuer:8443"  # bench/compose.yml's issuer, as the servers name it


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


SHORT = os.environ.get("BENCH_SHORT") == "1"
STRICT = os.environ.get("BENCH_STRICT", "1") != "0"
ROUNDS = env_int("BENCH_ROUNDS", 2 if SHORT else 3)
SECONDS = env_int("BENCH_SECONDS", 3 if SHORT else 10)
WARMUP_SECONDS = env_int("BENCH_WARMUP_SECONDS", 2 if SHORT else 5)
SEED_ITEMS = env_int("BENCH_SEED_ITEMS", 1000)
JOBS = env_int("BENCH_JOBS", 5_000 if SHORT else 20_000)
# Two variants of one transaction, close in cost: more, shorter rounds, and the median.
WRITE_ROUNDS = env_int("BENCH_WRITE_ROUNDS", 7 if SHORT else 9)
WRITE_SECONDS = env_int("BENCH_WRITE_SECONDS", 3 if SHORT else 5)
JOBS_DRIVER = ("exec", "-T", "jobs", "python", "/bench/jobs.py")


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    server: str  # the compose service that answers
    path: str = ""  # {id} is replaced by a seeded item's id
    script: str | None = None  # a wrk Lua script in bench/
    script_args: tuple[str, ...] = ()  # given to the script after the run's prefix
    credential: str = "api-key"  # what wrk sends: "api-key" (X-API-Key) or "bearer" (a JWT)
    driver: str | None = None  # instead of wrk: bench/jobs.py's command (drain, live, write)
    keep: str = "best"  # the round a row is judged by: "best", or "median" for close pairs


@dataclass(frozen=True)
class Bar:
    label: str
    row: str
    reference: str
    at_least: float  # row's requests/s over the reference's


# A fork adds its own routes here (and a service in bench/compose.yml for another setting).
# Reads first, the create last: it grows the table the page rows read.
ROWS = (
    Row("floor-health", "minimal FastAPI, /health", "floor-health", "/health"),
    Row("health", "GET /health", "app", "/health"),
    Row("metrics", "GET /health, metrics on", "metrics", "/health"),
    Row("floor-page", "minimal FastAPI + SQLAlchemy page", "floor-data", "/api/v1/items?limit=20"),
    Row("page", "GET /api/v1/items?limit=20", "app", "/api/v1/items?limit=20"),
    Row("floor-read", "minimal FastAPI + SQLAlchemy read", "floor-data", "/api/v1/items/{id}"),
    Row("item", "GET /api/v1/items/{id}, cached", "app", "/api/v1/items/{id}"),
    # The cached read with a bearer token, and the same read with verification taken
    # out (bench/unauthenticated.py): both send the same token, so they differ only in
    # its check (the signature, RS256, and the claims; the key from the worker's cache).
    Row(
        "item-open",
        "cached read, no authentication",
        "unauthenticated",
        "/api/v1/items/{id}",
        credential="bearer",
    ),
    Row(
        "item-bearer",
        "cached read, bearer token",
        "app",
        "/api/v1/items/{id}",
        credential="bearer",
    ),
    Row("create", "POST /api/v1/items", "app", "/api/v1/items", script="create.lua"),
    Row(
        "create-keyed",
        "POST /api/v1/items, Idempotency-Key",
        "app",
        "/api/v1/items",
        script="create.lua",
        script_args=("keyed",),
    ),
    # Jobs/s of a no-op job through the app's worker (bench/jobs.py): a backlog drained,
    # and jobs enqueued one per transaction while the worker runs.
    Row("jobs-drain", "no-op jobs/s, a backlog drained", "jobs", driver="drain"),
    Row("jobs-live", "no-op jobs/s, enqueued as it runs", "jobs", driver="live"),
    # The orders service's create transaction, with its confirm_order enqueue and without.
    Row(
        "order-write", "order write, its job enqueued (tx/s)", "jobs", driver="write", keep="median"
    ),
    Row(
        "order-write-bare", "order write, no enqueue (tx/s)", "jobs", driver="write", keep="median"
    ),
)
BARS = (
    Bar("/health >= 0.85 x minimal FastAPI", "health", "floor-health", 0.85),
    Bar("page >= 1.0 x minimal page", "page", "floor-page", 1.0),
    Bar("cached read >= 2 x uncached read", "item", "floor-read", 2.0),
    Bar("metrics on >= 0.9 x metrics off", "metrics", "health", 0.9),
    Bar("a keyed create >= 0.9 x a create", "create-keyed", "create", 0.9),
    Bar("bearer read >= 0.8 x unauthenticated", "item-bearer", "item-open", 0.8),
    Bar("order + its job >= 0.9 x order alone", "order-write", "order-write-bare", 0.9),
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
        """The best round, or for a "median" row the round of median rate."""
        ordered = sorted(self.rounds, key=lambda m: m.rps)
        return ordered[-1] if self.row.keep == "best" else ordered[(len(ordered) - 1) // 2]


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(*args: str, stdin: str | None = None) -> str:
    """Run a command, return its stdout; fail with its stderr."""
    result = subprocess.run(  # noqa: S603  # fixed docker and git commands, no shell
        args, cwd=ROOT, input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise subprocess.CalledProcessError(result.returncode, args)
    return result.stdout


def compose(*args: str, stdin: str | None = None) -> str:
    return run(*COMPOSE, *args, stdin=stdin)


def selected_rows() -> list[Row]:
    wanted = [key for key in os.environ.get("BENCH_ROWS", "").split(",") if key]
    return [row for row in ROWS if row.key in wanted] if wanted else list(ROWS)


def start_stack(services: list[str]) -> None:
    if "BENCH_IMAGE" not in os.environ:
        log(f"building the production image as {IMAGE}")
        run("docker", "build", "-q", "-t", IMAGE, ".")
    compose("build", "-q", "wrk")
    log("starting Postgres and Redis, running the migrations")
    compose("up", "-d", "--wait", "db", "redis")
    compose("run", "--rm", "migrate")
    log(f"starting {', '.join(services)}")
    compose("up", "-d", "--wait", *services, "wrk")


def stop_stack(failed: bool) -> None:
    if failed:  # the stack's state and logs, before it is removed
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / "failed-run.log"
        with path.open("w") as out:
            for args in (["ps", "-a"], ["logs", "--no-color", "--tail", "200"]):
                subprocess.run(  # noqa: S603  # a fixed docker command, no shell
                    [*COMPOSE, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
                )
        log(f"the stack's state and logs: {path.relative_to(ROOT)}")
    if os.environ.get("BENCH_KEEP") == "1":
        log("BENCH_KEEP=1: the stack is left running; `make bench-down` removes it")
        return
    subprocess.run(  # noqa: S603  # a fixed docker command, no shell
        [*COMPOSE, "--profile", "tools", "down", "-v", "-t", "5"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )


def make_api_key() -> str:
    """The key every request to the app carries (every /api/v1 route needs one;
    docs/auth.md), made in its container as an operator would: no identity provider here."""
    scopes = ("items:read", "items:write", "orders:read", "orders:write")
    name = f"bench-{uuid.uuid4().hex[:8]}"
    command = ("python", "-m", "app.core.auth.keys", "create", name, *scopes)
    return compose("exec", "-T", "app", *command).strip()


def make_token() -> str:
    """A bearer token from the stack's issuer (bench/compose.yml), with the read scope
    the bearer rows need, valid longer than any run."""
    command = (
        *("python", "/issuer/dev_issuer.py", "--keys", "/keys", "--issuer", ISSUER),
        *("token", "--audience", "bench", "--scopes", "items:read", "--sub", "bench"),
        *("--ttl", "14400"),
    )
    return compose("exec", "-T", "issuer", *command).strip()


def seed_items(api_key: str) -> str:
    """Create items through the API and return one id for the single-item rows."""
    log(f"seeding {SEED_ITEMS} items")
    script = (BENCH / "seed.py").read_text()
    args = ("python", "-", str(SEED_ITEMS), api_key)
    return compose("exec", "-T", "app", *args, stdin=script).strip()


FETCH = """
import sys, urllib.request
request = urllib.request.Request(sys.argv[1], headers={"X-API-Key": sys.argv[2]})
sys.stdout.buffer.write(urllib.request.urlopen(request, timeout=10).read())
"""


def check_same_bodies(rows: list[Row], item_id: str, api_key: str) -> None:
    by_key = {row.key: row for row in ROWS}
    measured = {row.key for row in rows}
    for floor, row in SAME_BODY:
        if floor in measured or row in measured:
            urls = (url_for(by_key[key], item_id) for key in (floor, row))
            fetch = ("exec", "-T", "app", "python", "-c", FETCH)
            bodies = [compose(*fetch, url, api_key) for url in urls]
            if bodies[0] != bodies[1]:
                raise SystemExit(f"bench: {floor} and {row} answer different bodies:\n{bodies}")
            log(f"{floor} answers {row}'s body byte for byte ({len(bodies[0])} bytes)")


UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def duration_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)([a-z]+)", text).groups()  # type: ignore[union-attr]
    return float(number) * UNITS_MS[unit]


def parse_wrk(output: str) -> Measurement:
    def find(pattern: str) -> str:
        match = re.search(pattern, output)
        if match is None:
            raise ValueError(f"wrk output without {pattern!r}:\n{output}")
        return match.group(1)

    socket_errors = re.search(r"Socket errors: (.*)", output)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1))) if socket_errors else 0
    return Measurement(
        rps=float(find(r"Requests/sec:\s+([\d.]+)")),
        p50_ms=duration_ms(find(r"\s50%\s+(\S+)")),
        p99_ms=duration_ms(find(r"\s99%\s+(\S+)")),
        requests=int(find(r"(\d+) requests in")),
        errors=errors + (int(non_2xx.group(1)) if non_2xx else 0),
    )


_addresses: dict[str, str] = {}


def url_for(row: Row, item_id: str) -> str:
    """wrk is given addresses, not names: Docker's DNS, slow on a busy machine, would
    otherwise fail a run now and then."""
    if row.server not in _addresses:
        container = compose("ps", "-q", row.server).strip()
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        _addresses[row.server] = run("docker", "inspect", "-f", template, container).strip()
    return f"http://{_addresses[row.server]}:8000{row.path.replace('{id}', item_id)}"


def wrk_args(row: Row, item_id: str, credentials: dict[str, str], seconds: int) -> list[str]:
    # Every row sends its credential, the floors too (they ignore it): the same request
    # bytes. With a script, wrk keeps -H's headers in wrk.headers, beside the script's own.
    args = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    args += ["-H", credentials[row.credential]]
    url = url_for(row, item_id)
    if row.script:
        prefix = uuid.uuid4().hex[:8]
        return [*args, "-s", f"/bench/{row.script}", url, "--", prefix, *row.script_args]
    return [*args, url]


def wrk(row: Row, item_id: str, credentials: dict[str, str], seconds: int) -> Measurement:
    return parse_wrk(compose("exec", "-T", "wrk", *wrk_args(row, item_id, credentials, seconds)))


def header_lines(api_key: str, token: str) -> dict[str, str]:
    """Each Row.credential as the header wrk sends."""
    return {"api-key": f"X-API-Key: {api_key}", "bearer": f"Authorization: Bearer {token}"}


def measure(rows: list[Row], item_id: str, credentials: dict[str, str]) -> dict[str, RowResult]:
    results = {row.key: RowResult(row) for row in rows}
    loaded = [r for r in rows if not r.driver]
    reads, writes = [r for r in loaded if not r.script], [r for r in loaded if r.script]
    for group in (group for group in (reads, writes) if group):
        log(f"warm-up, {WARMUP_SECONDS} s a row: {', '.join(r.key for r in group)}")
        for row in group:
            wrk(row, item_id, credentials, WARMUP_SECONDS)
        for number in range(1, ROUNDS + 1):
            # Every other round in reverse: no row always runs right after the same one.
            for row in group if number % 2 else reversed(group):
                measurement = wrk(row, item_id, credentials, SECONDS)
                results[row.key].rounds.append(measurement)
                log(f"round {number} {row.key:12} {measurement.rps:9,.0f} requests/s")
    measure_jobs(rows, results, item_id)
    return results


def jobs_driver(*args: str) -> list[dict[str, Any]]:
    """bench/jobs.py's results: one line `bench-result {json}` each."""
    lines = compose(*JOBS_DRIVER, *args).splitlines()
    return [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("bench-result ")]


def from_driver(result: dict[str, Any]) -> Measurement:
    return Measurement(
        rps=result["rate"],
        p50_ms=result.get("p50_ms"),
        p99_ms=result.get("p99_ms"),
        requests=result["count"],
        errors=result["errors"],
    )


def measure_jobs(rows: list[Row], results: dict[str, RowResult], item_id: str) -> None:
    """The job rows: throughput rounds in turn, then the write pair's alternating rounds."""
    throughput = [r for r in rows if r.driver in ("drain", "live")]
    for number in range(1, ROUNDS + 1 if throughput else 1):
        for row in throughput if number % 2 else reversed(throughput):
            [result] = jobs_driver(str(row.driver), str(JOBS))
            results[row.key].rounds.append(from_driver(result))
            extra = (
                f", enqueued at {result['enqueue_rate']:,.0f}/s" if "enqueue_rate" in result else ""
            )
            log(f"round {number} {row.key:12} {result['rate']:9,.0f} jobs/s{extra}")
    if any(r.driver == "write" for r in rows):
        log(
            f"order writes: {WRITE_ROUNDS} rounds x {WRITE_SECONDS} s, with and without the enqueue"
        )
        args = ("write", item_id, str(WRITE_ROUNDS), str(WRITE_SECONDS))
        for result in jobs_driver(*args):
            key = "order-write" if result["row"] == "on" else "order-write-bare"
            if key in results:
                results[key].rounds.append(from_driver(result))
            log(f"round {result['round']} {key:16} {result['rate']:9,.0f} transactions/s")
        if "order-write" in results and "order-write-bare" in results:
            pairs = zip(
                results["order-write"].rounds, results["order-write-bare"].rounds, strict=True
            )
            ratios = ", ".join(f"{with_job.rps / bare.rps:.3f}" for with_job, bare in pairs)
            log(f"order writes, with over without, round by round: {ratios}")


def check_bars(best: dict[str, Measurement]) -> list[dict[str, Any]]:
    checked = []
    for bar in BARS:
        row, reference = best.get(bar.row), best.get(bar.reference)
        ratio = row.rps / reference.rps if row and reference and reference.rps else None
        met = None if ratio is None else round(ratio, 3) >= bar.at_least
        checked.append({**asdict(bar), "ratio": ratio, "met": met})
    return checked


def print_table(results: dict[str, RowResult], bars: list[dict[str, Any]]) -> None:
    print(f"\n{'':40} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for result in results.values():
        kept = result.kept
        p50, p99 = (
            f"{ms:8.2f}" if ms is not None else f"{'-':>8}" for ms in (kept.p50_ms, kept.p99_ms)
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
    if any(r.row.driver for r in results.values()):
        print(
            f"  jobs/s: {JOBS:,} no-op jobs a round, best kept; order writes: tx/s, "
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
    rows = selected_rows()
    servers = list(dict.fromkeys([*(row.server for row in rows), "app"]))  # app takes the seed
    failed = True
    try:
        start_stack(servers)
        api_key = make_api_key()
        item_id = seed_items(api_key)
        check_same_bodies(rows, item_id, api_key)
        results = measure(rows, item_id, header_lines(api_key, make_token()))
        failed = False
    finally:
        stop_stack(failed)
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


def profile(target: str) -> int:
    """Load one route with wrk and record the app with py-spy from a sidecar container."""
    row = next(row for row in ROWS if row.key == target and row.server == "app")
    seconds = env_int("PROFILE_SECONDS", 20)
    RESULTS.mkdir(exist_ok=True)
    run("docker", "build", "-q", "-t", PY_SPY_IMAGE, "-f", "bench/py-spy.Dockerfile", "bench")
    failed = True
    try:
        start_stack(["app"])
        api_key = make_api_key()
        item_id = seed_items(api_key)
        # Longer than the recording and its sidecar's start; stopped with the stack.
        credentials = header_lines(api_key, make_token())
        args = wrk_args(row, item_id, credentials, seconds + 120)
        load = subprocess.Popen(  # noqa: S603  # a fixed docker command, no shell
            [*COMPOSE, "exec", "-T", "wrk", *args], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        time.sleep(WARMUP_SECONDS)
        log(f"py-spy: {seconds} s of {row.path}")
        container = compose("ps", "-q", "app").strip()
        out = f"/out/profile-{target}.svg"
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
        failed = False
    finally:
        stop_stack(failed)
    print(f"  flame graph: bench/results/profile-{target}.svg")
    return 0


def main() -> int:
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
