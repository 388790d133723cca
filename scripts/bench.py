#!/usr/bin/env python3
"""Throughput of the production image, measured side by side in one run (`make bench`).

    scripts/bench.py                       # build, measure, print the table, check the bars
    scripts/bench.py compare A.json B.json # two runs side by side (e.g. before and after)
    scripts/bench.py profile [health|item] # py-spy flame graph of the app under load

Every server runs the production image with the same environment, 2 workers and the
same CPU limit (bench/compose.yml); wrk loads one at a time from a container on the
same network. Rows are interleaved round by round (in reverse order every other round),
so a noisy neighbour slows all of them alike, and each row keeps its best round. The
bars are ratios between rows, which hold from one machine to another; absolute figures
do not.

Settings (environment): BENCH_SHORT=1 (a few seconds a row, for CI), BENCH_STRICT=0
(report missed ratio bars without failing; over 1 % errors always fails), BENCH_ROUNDS,
BENCH_SECONDS, BENCH_WARMUP_SECONDS,
BENCH_CPUS (each server's CPU limit, default 2), BENCH_IMAGE (measure an image built
elsewhere; skips the build), BENCH_KEEP=1 (leave the stack running), GUNICORN_MAX_REQUESTS
and LOG_LEVEL (passed to every server). Standard library only: runs on the host's python3.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


SHORT = os.environ.get("BENCH_SHORT") == "1"
STRICT = os.environ.get("BENCH_STRICT", "1") != "0"
ROUNDS = env_int("BENCH_ROUNDS", 2 if SHORT else 3)
SECONDS = env_int("BENCH_SECONDS", 3 if SHORT else 10)
WARMUP_SECONDS = env_int("BENCH_WARMUP_SECONDS", 2 if SHORT else 5)
SEED_ITEMS = env_int("BENCH_SEED_ITEMS", 1000)


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    server: str  # the compose service that answers
    path: str  # {id} is replaced by a seeded item's id
    script: str | None = None  # a wrk Lua script in bench/


@dataclass(frozen=True)
class Bar:
    label: str
    row: str
    reference: str
    at_least: float  # row's requests/s over the reference's
    # A row doing the same work with no framework, if there is one: the most any server
    # of this machine serves of it. The report prints its own ratio to the reference.
    ceiling: str | None = None


# Reads first, the create last: it grows the table the page row counts.
ROWS = (
    Row("bare", "bare ASGI app, Gunicorn", "bare", "/health"),
    Row("health", "GET /health, Gunicorn", "gunicorn", "/health"),
    Row("uvicorn", "GET /health, uvicorn --workers 2", "uvicorn", "/health"),
    Row("item", "GET /api/v1/items/{id}, cached", "app", "/api/v1/items/{id}"),
    Row("page", "GET /api/v1/items?limit=20", "app", "/api/v1/items?limit=20"),
    # The same page with no framework at all (bench/bare_page.py): the page row's ceiling.
    Row("bare-page", "the same page, no framework", "bare-page", "/api/v1/items?limit=20"),
    # Runs only when bench/metrics.env exists (the settings that turn metrics on).
    Row("metrics", "GET /health, metrics on", "metrics", "/health"),
    Row("create", "POST /api/v1/items", "app", "/api/v1/items", script="create.lua"),
)
BARS = (
    Bar("/health >= 0.40 x bare", "health", "bare", 0.40),
    Bar("Gunicorn >= 0.95 x uvicorn", "health", "uvicorn", 0.95),
    Bar("cached read >= 0.6 x /health", "item", "health", 0.60),
    Bar("page >= 0.3 x /health", "page", "health", 0.30, ceiling="bare-page"),
    Bar("metrics cost < 10 %", "metrics", "health", 0.90),
)


@dataclass
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors and non-2xx/3xx responses
    # CPU µs per request in each container of the row: "server", "db", "redis", "wrk".
    cpu_us: dict[str, float] = field(default_factory=dict)


@dataclass
class RowResult:
    key: str
    label: str
    rounds: list[Measurement] = field(default_factory=list)

    @property
    def best(self) -> Measurement:
        return max(self.rounds, key=lambda m: m.rps)


# ----------------------------------------------------------------------------- docker


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def run(*args: str, stdin: str | None = None, quiet: bool = False) -> str:
    """Run a command, return its stdout; fail with its stderr."""
    result = subprocess.run(  # noqa: S603  # fixed docker and git commands, no shell
        args, cwd=ROOT, input=stdin, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        if not quiet:
            sys.stderr.write(result.stdout + result.stderr)
        raise subprocess.CalledProcessError(result.returncode, args)
    return result.stdout


def compose(*args: str, stdin: str | None = None) -> str:
    return run(*COMPOSE, *args, stdin=stdin)


def metrics_enabled() -> bool:
    return (BENCH / "metrics.env").is_file()


def selected_rows() -> list[Row]:
    """BENCH_ROWS=bare,health,uvicorn measures only those rows (quicker, for one question)."""
    wanted = [key for key in os.environ.get("BENCH_ROWS", "").split(",") if key]
    rows = [row for row in ROWS if row.server != "metrics" or metrics_enabled()]
    return [row for row in rows if row.key in wanted] if wanted else rows


def servers(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(row.server for row in rows))


def start_stack(services: list[str]) -> None:
    if "BENCH_IMAGE" not in os.environ:
        log(f"building the production image as {IMAGE}")
        run("docker", "build", "-q", "-t", IMAGE, ".")
    compose("build", "-q", "wrk")
    log("starting Postgres and Redis, running the migrations")
    compose("up", "-d", "--wait", "db", "redis")
    compose("run", "--rm", "migrate")
    log(f"starting {', '.join(services)}")
    profiles = ["--profile", "metrics"] if "metrics" in services else []
    compose(*profiles, "up", "-d", "--wait", *services, "wrk")


def save_logs(path: Path) -> None:
    """The stack's state and logs, kept when a run fails (the stack is removed after it)."""
    RESULTS.mkdir(exist_ok=True)
    with path.open("w") as out:
        for args in (["ps", "-a"], ["logs", "--no-color", "--tail", "200"]):
            subprocess.run(  # noqa: S603  # a fixed docker command, no shell
                [*COMPOSE, "--profile", "metrics", *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
    log(f"the stack's state and logs: {path.relative_to(ROOT)}")


def stop_stack() -> None:
    if os.environ.get("BENCH_KEEP") == "1":
        log("BENCH_KEEP=1: the stack is left running; `make bench-down` removes it")
        return
    subprocess.run(  # noqa: S603  # a fixed docker command, no shell
        [*COMPOSE, "--profile", "metrics", "--profile", "tools", "down", "-v", "-t", "5"],
        cwd=ROOT,
        capture_output=True,
        check=False,
    )


def seed_items() -> str:
    """Create items through the API and return one id for the cached-read row."""
    log(f"seeding {SEED_ITEMS} items")
    script = (BENCH / "seed.py").read_text()
    return compose("exec", "-T", "app", "python", "-", str(SEED_ITEMS), stdin=script).strip()


# What a ceiling row answers must be what its app row answers, byte for byte: it is
# what makes the two rows comparable, and it would silently drift with the app.
SAME_BODY = {"bare-page": "page"}
FETCH = """
import sys, urllib.request
sys.stdout.buffer.write(urllib.request.urlopen(sys.argv[1], timeout=10).read())
"""


def check_same_bodies(rows: list[Row], item_id: str) -> None:
    """Run whenever a ceiling row is measured (the `app` server, always started, answers
    its app row even when that row is not measured)."""
    every_row = {row.key: row for row in ROWS}
    for ceiling, row in SAME_BODY.items():
        if any(selected.key == ceiling for selected in rows):
            bodies = [
                compose(
                    "exec", "-T", "app", "python", "-c", FETCH, url_for(every_row[key], item_id)
                )
                for key in (ceiling, row)
            ]
            if bodies[0] != bodies[1]:
                raise SystemExit(f"bench: {ceiling} and {row} answer different bodies")
            log(f"{ceiling} answers {row}'s body byte for byte ({len(bodies[0])} bytes)")


# -------------------------------------------------------------------------------- wrk

UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


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


def address(server: str) -> str:
    """The server's IP on the bench network. wrk is given addresses, not names: Docker's
    DNS, slow on a busy machine, would otherwise fail a run now and then."""
    if server not in _addresses:
        container = compose("ps", "-q", server).strip()
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        _addresses[server] = run("docker", "inspect", "-f", template, container).strip()
    return _addresses[server]


def url_for(row: Row, item_id: str) -> str:
    return f"http://{address(row.server)}:8000{row.path.replace('{id}', item_id)}"


def wrk(row: Row, item_id: str, seconds: int) -> Measurement:
    url = url_for(row, item_id)
    args = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency"]
    if row.script:
        args += ["-s", f"/bench/{row.script}", url, "--", uuid.uuid4().hex[:8]]
    else:
        args.append(url)
    containers = {"server": row.server, "db": "db", "redis": "redis", "wrk": "wrk"}
    before, started = cpu_seconds(containers), time.monotonic()
    measurement = parse_wrk(compose("exec", "-T", "wrk", *args))
    after, elapsed = cpu_seconds(containers), time.monotonic() - started
    if before and after and measurement.requests:
        measurement.cpu_us = {
            role: round(
                max(0.0, after[role] - before[role] - IDLE_CORES.get(service, 0.0) * elapsed)
                / measurement.requests
                * 1e6,
                1,
            )
            for role, service in containers.items()
        }
    return measurement


# Where a request's CPU goes (the server, Postgres, Redis, or wrk itself): each container's
# CPU counter, as the Docker Engine API reports it, read before and after a run. The API,
# not `docker exec cat` of the cgroup file: an exec runs a process in the container, and
# its own CPU would be counted as the requests'.
class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def docker_socket() -> str | None:
    """The Engine's Unix socket (DOCKER_HOST, else the current context's); None for
    another kind of endpoint (tcp, ssh), and then no CPU figures are shown."""
    host = (
        os.environ.get("DOCKER_HOST")
        or json.loads(run("docker", "context", "inspect"))[0]["Endpoints"]["docker"]["Host"]
    )
    return host.removeprefix("unix://") if host.startswith("unix://") else None


def container_id(service: str) -> str:
    return compose("ps", "-q", service).strip()


def cpu_seconds(containers: dict[str, str]) -> dict[str, float] | None:
    """CPU seconds each service's container has used so far, or None if unknown."""
    path = docker_socket()
    if path is None:
        return None

    def read(service: str) -> float:
        connection = UnixHTTPConnection(path)
        try:
            url = f"/containers/{container_id(service)}/stats?stream=false&one-shot=true"
            connection.request("GET", url)
            stats = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        return int(stats["cpu_stats"]["cpu_usage"]["total_usage"]) / 1e9

    with ThreadPoolExecutor(len(containers)) as pool:
        return dict(zip(containers, pool.map(read, containers.values()), strict=True))


# What each service uses with no load, in cores (Redis's timers, the app's listener
# heartbeats), taken off every run's figures: the columns show what requests cost.
IDLE_CORES: dict[str, float] = {}


def measure_idle(services: list[str], seconds: float = 3.0) -> None:
    containers = {service: service for service in services}
    before, started = cpu_seconds(containers), time.monotonic()
    time.sleep(seconds)
    after, elapsed = cpu_seconds(containers), time.monotonic() - started
    if before and after:
        IDLE_CORES.update({s: (after[s] - before[s]) / elapsed for s in services})


# ------------------------------------------------------------------ memory and image

PROCESSES = r"""
import json, os
rows = []
tick = os.sysconf("SC_CLK_TCK")
for pid in filter(str.isdigit, os.listdir("/proc")):
    if int(pid) == os.getpid():
        continue
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        status = dict(l.split(":", 1) for l in open(f"/proc/{pid}/status") if ":" in l)
        pss = [l for l in open(f"/proc/{pid}/smaps_rollup") if l.startswith("Pss:")]
        stat = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    rows.append({"pid": int(pid), "cmd": cmd.strip(),
                 "rss_kb": int(status["VmRSS"].split()[0]),
                 "pss_kb": int(pss[0].split()[1]) if pss else 0,
                 "cpu_s": (int(stat[11]) + int(stat[12])) / tick})
print(json.dumps(rows))
"""


def workers(server: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The server's master (pid 1) and its workers, with RSS, PSS and CPU time used."""
    processes = json.loads(compose("exec", "-T", server, "python", "-c", PROCESSES))
    master = next((p for p in processes if p["pid"] == 1), None)
    # Not a worker: multiprocessing's resource tracker, if uvicorn's supervisor starts one.
    return master, [p for p in processes if p["pid"] != 1 and "resource_tracker" not in p["cmd"]]


def memory(server: str) -> dict[str, Any]:
    """RSS and PSS (shared pages split between the processes sharing them) per worker,
    and how many times a worker was replaced so far (Gunicorn's max_requests)."""
    master, processes = workers(server)
    logs = compose("logs", "--no-log-prefix", server)
    return {
        "worker_restarts": max(0, logs.count("Booting worker") - len(processes)),
        # A cached read whose Redis call times out goes to Postgres: say when it happened.
        "redis_skipped": logs.count("redis unavailable"),
        "master_rss_mb": round(master["rss_kb"] / 1024, 1) if master else None,
        "worker_rss_mb": [round(p["rss_kb"] / 1024, 1) for p in processes],
        "worker_pss_mb": [round(p["pss_kb"] / 1024, 1) for p in processes],
    }


def boot_cpu_seconds(server: str) -> float:
    """CPU a worker spends starting (imports, app, lifespan), read before any load:
    what each recycle costs, whatever else the machine is doing."""
    _, processes = workers(server)
    return round(statistics.fmean(p["cpu_s"] for p in processes), 2)


def image_size() -> dict[str, Any]:
    image = os.environ.get("BENCH_IMAGE", IMAGE)
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+) AS runtime$", dockerfile, re.MULTILINE).group(1)  # type: ignore[union-attr]

    def size(name: str) -> int:
        return int(run("docker", "image", "inspect", "-f", "{{.Size}}", name))

    return {"base": base, "base_mb": size(base) / 1e6, "added_mb": (size(image) - size(base)) / 1e6}


# ------------------------------------------------------------------------------ report


def ratio(rows: dict[str, Measurement], key: str, reference: str) -> float | None:
    if key not in rows or reference not in rows or rows[reference].rps == 0:
        return None
    return rows[key].rps / rows[reference].rps


def check_bars(rows: dict[str, Measurement]) -> list[dict[str, Any]]:
    checked = []
    for bar in BARS:
        value = ratio(rows, bar.row, bar.reference)
        checked.append(
            {
                "label": bar.label,
                "ratio": value,
                "at_least": bar.at_least,
                "met": None if value is None else value >= bar.at_least,
                **cpu_budget(rows, bar),
                **ceiling_ratios(rows, bar),
            }
        )
    return checked


def cpu_budget(rows: dict[str, Measurement], bar: Bar) -> dict[str, float]:
    """A bar as CPU: both rows keep the cores busy, so their throughputs are in the
    inverse ratio of their CPU per request (all containers). The row meets the bar when
    it costs at most the reference's CPU divided by the bar."""
    row, reference = rows.get(bar.row), rows.get(bar.reference)
    if not (row and reference and row.cpu_us and reference.cpu_us):
        return {}
    return {
        "cpu_us": round(sum(row.cpu_us.values())),
        "cpu_budget_us": round(sum(reference.cpu_us.values()) / bar.at_least),
    }


def ceiling_ratios(rows: dict[str, Measurement], bar: Bar) -> dict[str, Any]:
    """The ceiling row against the same reference, and the row's share of the ceiling."""
    if bar.ceiling is None:
        return {}
    ceiling = ratio(rows, bar.ceiling, bar.reference)
    share = ratio(rows, bar.row, bar.ceiling)
    if ceiling is None or share is None:
        return {}
    return {"ceiling": bar.ceiling, "ceiling_ratio": ceiling, "share_of_ceiling": share}


def best_rows(result: dict[str, Any]) -> dict[str, Measurement]:
    return {row["key"]: Measurement(**row["best"]) for row in result["rows"]}


def print_table(result: dict[str, Any]) -> None:
    rows = best_rows(result)
    print(f"\n{'':36} {'requests/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'x bare':>7} {'errors':>6}")
    for row in result["rows"]:
        best = rows[row["key"]]
        x_bare = ratio(rows, row["key"], "bare")
        shown = "-" if x_bare is None else f"{x_bare:.2f}"
        print(
            f"{row['label']:36} {best.rps:10,.0f} {best.p50_ms:8.2f} {best.p99_ms:8.2f} "
            f"{shown:>7} {best.errors:6}"
        )
    print()
    for bar in result["bars"]:
        if bar["met"] is None:
            print(f"  --    {bar['label']:32} (row not measured)")
        else:
            mark = "ok  " if bar["met"] else "MISS"
            # Three decimals when two would round a miss up to the bar itself (0.595: 0.60).
            shown = f"{bar['ratio']:.2f}"
            if not bar["met"] and float(shown) >= bar["at_least"]:
                shown = f"{bar['ratio']:.3f}"
            print(f"  {mark}  {bar['label']:32} {shown} (bar {bar['at_least']:.2f})")
            if not bar["met"] and "cpu_budget_us" in bar:
                print(
                    f"        as CPU: {bar['cpu_us']:,} us a request, all containers;"
                    f" the bar allows {bar['cpu_budget_us']:,}"
                )
            if "ceiling_ratio" in bar:
                print(
                    f"        with no framework ({bar['ceiling']}): {bar['ceiling_ratio']:.2f};"
                    f" the row serves {bar['share_of_ceiling']:.2f} x that"
                )
    print_cpu(result)
    memory_rows = result.get("memory", {})
    if memory_rows:
        print()
        for server, figures in memory_rows.items():
            print(
                f"  {server:9} worker RSS {figures['worker_rss_mb']} MB, "
                f"PSS {figures['worker_pss_mb']} MB, master RSS {figures['master_rss_mb']} MB, "
                f"{figures.get('worker_restarts', '?')} worker restarts, "
                f"Redis breaker opened {figures.get('redis_skipped', '?')} times"
            )
    if "worker_boot_cpu_s" in result:
        print(f"  worker start (imports, app, lifespan): {result['worker_boot_cpu_s']} CPU s")
    image = result.get("image")
    if image:
        print(
            f"  image  {image['added_mb']:.1f} MB over {image['base']} ({image['base_mb']:.1f} MB)"
        )
    meta = result["meta"]
    print(
        f"\n  {meta['date']}  rev {meta['revision']}  {meta['cpu']} x{meta['cpus']}  "
        f"{meta['rounds']} rounds x {meta['seconds']} s, best kept"
    )


def print_cpu(result: dict[str, Any]) -> None:
    """Each row's CPU per request by container (best round): what a bar leaves the app."""
    rows = [(row["label"], row["best"].get("cpu_us")) for row in result["rows"]]
    if not any(cpu for _, cpu in rows):
        return
    roles = ("server", "db", "redis", "wrk")
    idle = result["meta"].get("idle_cores", {})
    taken_off = ", ".join(f"{service} {cores * 100:.1f} %" for service, cores in idle.items())
    print(f"\n  {'CPU per request, us':34} {''.join(f'{r:>8}' for r in roles)}    total")
    for label, cpu in rows:
        if cpu:
            figures = "".join(f"{cpu[role]:8.0f}" for role in roles)
            print(f"  {label:34} {figures} {sum(cpu.values()):8.0f}")
    if taken_off:
        print(f"  (use at rest taken off, in % of a core: {taken_off})")


def write_svg(result: dict[str, Any], path: Path) -> None:
    """A horizontal bar chart of requests/s, with each row's ratio to bare and p99."""
    rows = best_rows(result)
    top = max(m.rps for m in rows.values()) or 1
    label_w, bar_w, line_h = 270, 380, 28
    height = 50 + line_h * len(rows)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 200}" '
        f'height="{height}" font-family="sans-serif" font-size="13">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="10" y="22" font-weight="bold">requests/s, 2 workers, wrk -t{THREADS} '
        f"-c{CONNECTIONS} ({result['meta']['date'][:10]}, rev {result['meta']['revision']})</text>",
    ]
    for index, row in enumerate(result["rows"]):
        best = rows[row["key"]]
        y = 40 + index * line_h
        width = max(1, round(bar_w * best.rps / top))
        x_bare = ratio(rows, row["key"], "bare") or 0
        colour = "#888" if row["key"] == "bare" else "#3a7bd5"
        parts += [
            f'<text x="10" y="{y + 15}">{row["label"]}</text>',
            f'<rect x="{label_w}" y="{y}" width="{width}" height="20" fill="{colour}"/>',
            f'<text x="{label_w + width + 6}" y="{y + 15}">{best.rps:,.0f} '
            f"({x_bare:.2f}x bare, p99 {best.p99_ms:.1f} ms)</text>",
        ]
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def revision() -> str:
    try:
        rev = run("git", "rev-parse", "--short", "HEAD", quiet=True).strip()
        dirty = run("git", "status", "--porcelain", "--", "app", "Dockerfile", quiet=True)
    except (subprocess.CalledProcessError, FileNotFoundError):
        return "unknown"
    return rev + ("-dirty" if dirty.strip() else "")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# ------------------------------------------------------------------------------- modes


def measure() -> dict[str, Any]:
    rows = selected_rows()
    results = {row.key: RowResult(row.key, row.label) for row in rows}
    start_stack(list(dict.fromkeys([*servers(rows), "app"])))  # app takes the seed
    boot_cpu = boot_cpu_seconds("app")
    item_id = seed_items()
    check_same_bodies(rows, item_id)
    measure_idle([*servers(rows), "app", "db", "redis", "wrk"])
    reads, writes = [r for r in rows if not r.script], [r for r in rows if r.script]
    for group in (reads, writes):
        log(f"warm-up, {WARMUP_SECONDS} s a row: {', '.join(r.key for r in group)}")
        for row in group:
            wrk(row, item_id, WARMUP_SECONDS)
        for number in range(1, ROUNDS + 1):
            # Odd rounds in order, even rounds in reverse: no row always runs right after
            # the same one (the bare app's row, the busiest, would otherwise always
            # precede /health's and tilt the Gunicorn vs uvicorn ratio).
            for row in group if number % 2 else reversed(group):
                measurement = wrk(row, item_id, SECONDS)
                results[row.key].rounds.append(measurement)
                log(f"round {number} {row.key:8} {measurement.rps:9,.0f} requests/s")
        if group is reads:
            memory_rows = {server: memory(server) for server in servers(rows)}
    best = {key: r.best for key, r in results.items()}
    return {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "revision": revision(),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "server_cpu_limit": os.environ.get("BENCH_CPUS", "2"),
            "rounds": ROUNDS,
            "seconds": SECONDS,
            "short": SHORT,
            "gunicorn_max_requests": os.environ.get("GUNICORN_MAX_REQUESTS") or "default",
            "log_level": os.environ.get("LOG_LEVEL") or "INFO",
            "image": os.environ.get("BENCH_IMAGE", IMAGE),
            "idle_cores": {service: round(cores, 4) for service, cores in IDLE_CORES.items()},
        },
        "rows": [
            {
                "key": r.key,
                "label": r.label,
                "best": asdict(r.best),
                "rounds": [asdict(m) for m in r.rounds],
            }
            for r in results.values()
        ],
        "bars": check_bars(best),
        "memory": memory_rows,
        "worker_boot_cpu_s": boot_cpu,
        "image": image_size(),
    }


def bench() -> int:
    started = time.monotonic()
    try:
        result = measure()
    except BaseException:
        save_logs(RESULTS / "failed-run.log")
        raise
    finally:
        stop_stack()
    RESULTS.mkdir(exist_ok=True)
    name = os.environ.get("BENCH_NAME") or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2) + "\n")
    write_svg(result, RESULTS / f"{name}.svg")
    write_svg(result, RESULTS / "latest.svg")
    print_table(result)
    print(f"  results: bench/results/{name}.json and .svg ({time.monotonic() - started:.0f} s)")
    failures = [bar["label"] for bar in result["bars"] if bar["met"] is False]
    # More than 1 % errors means a broken server, not a slow one: fail even when
    # BENCH_STRICT=0 only reports the ratio bars.
    errors = [
        f"{row['key']}: {row['best']['errors']} errors"
        for row in result["rows"]
        if row["best"]["errors"] > row["best"]["requests"] / 100
    ]
    if errors:
        print(f"\nbench: errors: {'; '.join(errors)}")
        return 1
    if failures and STRICT:
        print(f"\nbench: missed: {'; '.join(failures)} (BENCH_STRICT=0 to report only)")
        return 1
    return 0


def compare(before_path: str, after_path: str) -> int:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    rows_before, rows_after = best_rows(before), best_rows(after)
    print(f"\n{'':36} {'before':>9} {'after':>9} {'change':>7}   {'x bare':>11}   {'p99 ms':>13}")
    for row in after["rows"]:
        key, new = row["key"], rows_after[row["key"]]
        old = rows_before.get(key)
        change = f"{(new.rps / old.rps - 1) * 100:+6.0f}%" if old else "    new"
        ratios = [ratio(rows, key, "bare") for rows in (rows_before, rows_after)]
        shown = " -> ".join("  -" if r is None else f"{r:.2f}" for r in ratios)
        p99 = f"{old.p99_ms:5.1f} -> {new.p99_ms:5.1f}" if old else f"        {new.p99_ms:5.1f}"
        print(
            f"{row['label']:36} {old.rps if old else 0:9,.0f} {new.rps:9,.0f} {change:>7}   "
            f"{shown:>11}   {p99:>13}"
        )
    print()
    for old_bar, new_bar in zip(before["bars"], after["bars"], strict=True):
        figures = " -> ".join(
            "  -" if bar["ratio"] is None else f"{bar['ratio']:.2f}" for bar in (old_bar, new_bar)
        )
        print(f"  {new_bar['label']:32} {figures}  (bar {new_bar['at_least']:.2f})")
    return 0


def profile(target: str) -> int:
    """Load one endpoint with wrk and record it with py-spy from a sidecar container."""
    rows = {row.key: row for row in ROWS if row.key in ("health", "item", "page", "create")}
    row = rows[target]
    seconds = env_int("PROFILE_SECONDS", 20)
    RESULTS.mkdir(exist_ok=True)
    run("docker", "build", "-q", "-t", PY_SPY_IMAGE, "-f", "bench/py-spy.Dockerfile", "bench")
    try:
        start_stack(list(dict.fromkeys([row.server, "app"])))  # app takes the seed
        item_id = seed_items()
        wrk(row, item_id, WARMUP_SECONDS)
        container = compose("ps", "-q", row.server).strip()
        url = url_for(row, item_id)
        script = ["-s", f"/bench/{row.script}", url, "--", "profile"] if row.script else [url]
        # Longer than the recording and its sidecar's start; stopped with the stack.
        wrk_args = [f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds + 120}s", *script]
        load = subprocess.Popen(  # noqa: S603  # a fixed docker command, no shell
            [*COMPOSE, "exec", "-T", "wrk", "wrk", *wrk_args], cwd=ROOT, stdout=subprocess.DEVNULL
        )
        time.sleep(2)
        log(f"py-spy: {seconds} s of {row.path}")
        # Two samplers at once (--nonblocking: neither pauses the workers): a flame graph
        # to look at, and collapsed stacks to count self time from.
        record = (
            f"py-spy record --pid 1 --subprocesses --nonblocking --rate 200 --duration {seconds}"
        )
        out = f"/out/profile-{target}"
        # py-spy runs as root to use SYS_PTRACE; the files are handed back to you.
        sidecar = ["--pid", f"container:{container}", "--cap-add", "SYS_PTRACE"]
        run(
            *("docker", "run", "--rm", *sidecar, "-v", f"{RESULTS}:/out"),
            *("--entrypoint", "sh", PY_SPY_IMAGE, "-c"),
            f"{record} -f flamegraph -o {out}.svg >/dev/null & "
            f"{record} -f raw -o {out}.txt >/dev/null; wait; "
            f"chown {os.getuid()}:{os.getgid()} {out}.svg {out}.txt",
        )
        load.terminate()
    finally:
        stop_stack()
    print_top_frames(RESULTS / f"profile-{target}.txt")
    print(f"  flame graph: bench/results/profile-{target}.svg")
    return 0


def print_top_frames(collapsed: Path, count: int = 10) -> None:
    """The frames where the workers spent their own time (self time), from py-spy's raw
    output: one `frame;frame;...;leaf samples` line per distinct stack."""
    self_samples: dict[str, int] = {}
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        # By function, not by line; a process name as the leaf: no Python frame at all.
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
        if leaf.startswith("process "):
            leaf = "(native code, no Python frame)"
        self_samples[leaf] = self_samples.get(leaf, 0) + int(samples)
        total += int(samples)
    print(f"\n  top {count} frames by self time ({total} samples)")
    top = sorted(self_samples.items(), key=lambda kv: kv[1], reverse=True)[:count]
    for leaf, hits in top:
        print(f"  {hits / total * 100:5.1f}%  {leaf}")


def main() -> int:
    # Stopped from outside (CI's timeout, kill): still remove the stack on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mode = sys.argv[1] if len(sys.argv) > 1 else "run"
    if mode == "run":
        return bench()
    if mode == "compare" and len(sys.argv) == 4:
        return compare(sys.argv[2], sys.argv[3])
    if mode == "profile":
        return profile(sys.argv[2] if len(sys.argv) > 2 else "health")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
