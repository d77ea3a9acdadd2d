#!/usr/bin/env python3
"""`make bench`: Berth against the servers people would otherwise pick, on this machine.

Brings up its own compose project (`berth-bench`, own volumes and port, torn down afterwards),
times `make up` cold and warm, and drives every server with wrk from a separate process: one
request after another on 1, 8 and 64 connections, each run BENCH_SECONDS long, with

  distinct     a new row every request (every one a cache miss: the model runs)
  repeated     the same row every request (cache hits)
  batch        100 new rows per request
  v2-distinct  distinct rows in the Open Inference Protocol V2 body that MLServer gets

Berth runs them all with `make up`'s settings, over the bridge; then distinct rows at 64
connections with each access log mode, through the published port and over the bridge (the
side-by-side table). The peers (the Flask tutorial app under gunicorn -w 2, Seldon MLServer with
its scikit-learn runtime, with and without adaptive batching, BentoML with adaptive batching at
1 and 2 workers, and a bare ASGI app under uvicorn, the HTTP ceiling) run `distinct`, and
`batch` at 8 connections where they take batches, while Berth's services are stopped. Every
run reports the server container's CPU per request. After each Berth run it waits for the
ledger to drain, reads the served -> stored delay of that run's rows from PostgreSQL and each
service's CPU per row until then (api, worker, redis, postgres); then it measures the cost of
the metrics and of the cache (each switched off and on, alternately), the worker alone on a
200,000-row backlog, the model call alone inside the api container, the API's memory per
process and the image sizes. It prints tables and the goals
held against them, and writes everything as JSON to bench-results/.

Settings (environment): BENCH_SECONDS (10), BENCH_API_PORT (18200), BENCH_BACKLOG_ROWS
(200000), BENCH_BASELINES (1; 0 skips them), BENCH_KEEP (0; 1 leaves the stack up),
BENCH_ROUNDS (3: rounds of the side-by-side configurations, the median kept).
Only the standard library: it runs on the host with any python3.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PROJECT = "berth-bench"
ENV_FILE = ROOT / ".env.bench"
PORT = int(os.environ.get("BENCH_API_PORT", "18200"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
BACKLOG_ROWS = int(os.environ.get("BENCH_BACKLOG_ROWS", "200000"))
BASELINES = os.environ.get("BENCH_BASELINES", "1") != "0"
KEEP = os.environ.get("BENCH_KEEP", "0") == "1"
ROUNDS = max(1, int(os.environ.get("BENCH_ROUNDS", "3")))
COMPOSE = ["docker", "compose", "-p", PROJECT, "--env-file", str(ENV_FILE)]
CONCURRENCY = (1, 8, 64)
# (name, path, wrk body format, wrk mode): Berth's REST routes, then the same distinct rows in
# the Open Inference Protocol V2 body MLServer is driven with (Berth's /v2 route, through FastAPI)
BERTH_LOADS = (
    ("distinct", "/predict", "berth", "distinct"),
    ("repeated", "/predict", "berth", "repeated"),
    ("batch", "/predict", "berth", "batch"),
    ("v2-distinct", "/v2/models/iris/infer", "v2", "distinct"),
)
API_SETTINGS_VARIED = ("ACCESS_LOG", "METRICS_ENABLED", "CACHE_ENABLED", "CACHE_MIN_ROW_US")
ROWS_PER_REQUEST = {"distinct": 1, "repeated": 1, "batch": 100}
# The settings the headline table compares (label, environment of the api container): what
# `make up` gives, and the access log's other modes (a line per request, or none at all).
CONFIGURATIONS: tuple[tuple[str, dict[str, str]], ...] = (
    ("make up defaults", {}),
    ("ACCESS_LOG=all", {"ACCESS_LOG": "all"}),
    ("ACCESS_LOG=off", {"ACCESS_LOG": "off"}),
)


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


def run(cmd: list[str], *, stdin: Path | None = None, check: bool = True) -> str:
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
        done = subprocess.run(cmd, stdin=source, capture_output=True, text=True, cwd=ROOT)
    if check and done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return done.stdout


def timed(cmd: list[str]) -> float:
    started = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return round(time.monotonic() - started, 1)


def in_api(*args: str, script: str = "probe.py") -> Any:
    """Runs one of bench/'s scripts inside the api container; its last line is JSON."""
    out = run([*COMPOSE, "exec", "-T", "api", "python", "-", *args], stdin=BENCH / script)
    return json.loads(out.strip().splitlines()[-1])


def container_ip(container: str) -> str:
    """The container's address on its network: wrk talks to it over the bridge, with no
    docker-proxy (the userland port forwarder) in between, for Berth and baselines alike."""
    out = run(
        [
            "docker",
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            container,
        ]
    )
    return out.split()[0]


def api_container() -> str:
    return run([*COMPOSE, "ps", "-q", "api"]).strip()


# The services that a served row costs CPU in, from the request to its stored row.
LEDGER_PATH = ("worker", "redis", "postgres")


def ledger_containers() -> dict[str, str]:
    """The containers a prediction passes through after the API, by service."""
    return {service: run([*COMPOSE, "ps", "-q", service]).strip() for service in LEDGER_PATH}


def stack_cpu_us(containers: dict[str, str]) -> dict[str, int]:
    """CPU time used so far by each of these containers."""
    return {service: cpu_us(container) for service, container in containers.items()}


def api_url(path: str = "/predict") -> str:
    return f"http://{container_ip(api_container())}:8000{path}"


def published_url(path: str = "/predict") -> str:
    """The API's port as `make up` publishes it on the host: docker-proxy, the userland port
    forwarder, carries every request, as it does for a user on 127.0.0.1."""
    return f"http://127.0.0.1:{PORT}{path}"


class _DockerSocket(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def cpu_us(container: str) -> int:
    """CPU time the container's processes have used so far, in us, from the engine's own
    account (cgroup v1 or v2 alike). Read before and after a run: the server's CPU per request,
    with wrk and docker-proxy, which run outside the container, left out."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise SystemExit(f"bench: reads CPU use through a unix socket, DOCKER_HOST is {host}")
    connection = _DockerSocket(host.removeprefix("unix://"))
    try:
        connection.request("GET", f"/containers/{container}/stats?stream=false&one-shot=true")
        stats = json.loads(connection.getresponse().read())
    finally:
        connection.close()
    return int(stats["cpu_stats"]["cpu_usage"]["total_usage"]) // 1000


def proxy_cpu_us(port: int = PORT) -> int | None:
    """CPU time used so far by the docker-proxy processes that forward this host port, from
    /proc: what a request through the published port costs outside every container. None where
    there is none to see (the daemon runs with "userland-proxy": false, or in a VM or another
    PID namespace, as Docker Desktop's does)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if not argv[0].endswith(b"docker-proxy") or b"-host-port" not in argv:
                continue
            if argv[argv.index(b"-host-port") + 1] != str(port).encode():
                continue
            # utime and stime, the 14th and 15th fields, after the parenthesised command name
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        total = (total or 0) + (int(fields[11]) + int(fields[12])) * 1_000_000 // ticks
    return total


def measured(
    container: str, url: str, concurrency: int, fmt: str, mode: str, rows: int = 1
) -> dict[str, Any]:
    """One wrk run, with the server container's CPU per request (and per row, for batches)."""
    before = cpu_us(container)
    point = wrk(url, concurrency, fmt, mode)
    used = cpu_us(container) - before
    point["cpu_us_per_request"] = round(used / point["requests"]) if point["requests"] else None
    point["rows_per_s"] = round(point["rps"] * rows)
    return point


def wait_http(url: str, body: bytes, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {url} did not answer within {timeout:.0f} s")
        time.sleep(1)


def wrk(url: str, concurrency: int, fmt: str, mode: str, seconds: int = SECONDS) -> dict[str, Any]:
    threads = 1 if concurrency == 1 else 2
    nonce = str(random.randrange(1_000_000_000))
    out = run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(BENCH / "wrk" / "load.lua"),
            url,
            "--",
            fmt,
            mode,
            nonce,
        ]
    )
    raw = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "concurrency": concurrency,
        "requests": raw["requests"],
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "errors": errors,
        "wrk": raw,
    }


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing wrk from Debian's packages")
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True, capture_output=True)
        return
    raise SystemExit("bench: wrk is needed (apt-get install wrk)")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024**2, 1),
        "kernel": platform.release(),
        "wrk": run(["wrk", "--version"], check=False).splitlines()[0:1],
    }


def berth_runs(results: dict[str, Any]) -> None:
    log("warm-up: 3 s of distinct rows at concurrency 8")
    wrk(api_url(), 8, "berth", "distinct", seconds=3)
    results["berth"] = {}
    container = api_container()
    ledger = ledger_containers()
    for name, path, fmt, mode in BERTH_LOADS:
        url = api_url(path)
        results["berth"][name] = []
        for concurrency in CONCURRENCY:
            since = datetime.now(UTC).isoformat()
            ledger_before = stack_cpu_us(ledger)
            point = measured(container, url, concurrency, fmt, mode, ROWS_PER_REQUEST[mode])
            until = datetime.now(UTC).isoformat()
            point["backlog_at_end"] = in_api("backlog")
            point["ledger"] = in_api("lag", since, until)  # once the run's rows are all stored
            point["cpu_us_per_row"] = cpu_per_row(
                point, ROWS_PER_REQUEST[mode], ledger_before, stack_cpu_us(ledger)
            )
            results["berth"][name].append(point)
            log(
                f"berth {name:>11} c={concurrency:<2} {point['rps']:>8.0f} req/s  "
                f"p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms  "
                f"errors {point['errors']}  {point['cpu_us_per_request']} us CPU/request  "
                f"stored {point['ledger']['rows']} rows, "
                f"lag p99 {point['ledger']['lag_p99_ms']} ms, CPU us per row "
                f"{point['cpu_us_per_row']}"
            )


def cpu_per_row(
    point: dict[str, Any], rows_per_request: int, before: dict[str, int], after: dict[str, int]
) -> dict[str, float | None]:
    """Each service's CPU per row served, from the start of the run until the ledger had stored
    the run's rows: the API's while it served, the worker's, Redis's and PostgreSQL's until the
    backlog was through. (The lag query of probe.py is in PostgreSQL's share: a few ms.)"""
    rows = point["requests"] * rows_per_request
    if not rows:
        return {}
    per_request = point["cpu_us_per_request"]
    shares: dict[str, float | None] = {
        "api": None if per_request is None else round(per_request / rows_per_request, 1)
    }
    for service in LEDGER_PATH:
        shares[service] = round((after[service] - before[service]) / rows, 1)
    shares["total"] = round(sum(v for v in shares.values() if v is not None), 1)
    return shares


def configurations(results: dict[str, Any]) -> None:
    """Distinct rows at 64 connections, the load the goals are set for, with the settings a user
    gets from `make up` and the alternatives, each through the published port (what a user on
    this host reaches) and the container's bridge address (no docker-proxy in between).

    BENCH_ROUNDS rounds, the configurations in turn in each, and each one's run of median req/s
    kept: on a shared 2-core machine two runs of the same configuration a minute apart differed
    by a third, which single runs turned into differences between configurations."""
    runs: list[dict[str, Any]] = []
    for round_number in range(1, ROUNDS + 1):
        for label, environment in CONFIGURATIONS:
            restart_api(**environment)
            container = api_container()
            for through, url in (("published port", published_url()), ("bridge", api_url())):
                wrk(url, 64, "berth", "distinct", seconds=3)  # warm-up
                since = datetime.now(UTC).isoformat()
                proxy_before = proxy_cpu_us() if through == "published port" else None
                point = measured(container, url, 64, "berth", "distinct")
                proxy_after = proxy_cpu_us() if proxy_before is not None else None
                until = datetime.now(UTC).isoformat()
                point["proxy_cpu_us_per_request"] = (
                    round((proxy_after - proxy_before) / point["requests"])
                    if proxy_before is not None and proxy_after is not None and point["requests"]
                    else None
                )
                point["ledger"] = in_api("lag", since, until)
                point.update(settings=label, through=through, round=round_number)
                runs.append(point)
                log(
                    f"berth round {round_number} {label:>15}, {through:>14}: "
                    f"{point['rps']:>8.0f} req/s  p99 {point['p99_ms']:.2f} ms  "
                    f"{point['cpu_us_per_request']} us CPU/request  "
                    f"docker-proxy {point['proxy_cpu_us_per_request']} us/request  "
                    f"lag p99 {point['ledger']['lag_p99_ms']} ms"
                )
    results["configuration_runs"] = runs
    results["configurations"] = []
    for label, _ in CONFIGURATIONS:
        for through in ("published port", "bridge"):
            same = sorted(
                (p for p in runs if p["settings"] == label and p["through"] == through),
                key=lambda p: p["rps"],
            )
            median = dict(same[(len(same) - 1) // 2])
            median["rps_rounds"] = [p["rps"] for p in sorted(same, key=lambda p: p["round"])]
            results["configurations"].append(median)
    restart_api()
    results["api_memory"] = in_api("memory")


def restart_api(**environment: str) -> None:
    """Recreates the api container with these settings (compose passes them through), or with
    the env file's alone: a setting of an earlier call does not stay."""
    inherited = {k: v for k, v in os.environ.items() if k not in API_SETTINGS_VARIED}
    started = time.monotonic()
    done = subprocess.run(
        [*COMPOSE, "up", "--detach", "--no-deps", "--wait", "api"],
        cwd=ROOT,
        env={**inherited, **environment},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        # what compose said, the container's state and health checks, and its last log lines
        state = run(["docker", "inspect", "-f", "{{json .State}}", api_container()], check=False)
        logs = run([*COMPOSE, "logs", "--no-color", "--tail", "40", "api"], check=False)
        raise SystemExit(
            f"bench: the api did not come back ({environment or 'defaults'}) after"
            f" {time.monotonic() - started:.0f} s:\n{done.stdout}{done.stderr}\n{state}\n{logs}"
        )
    log(f"api recreated ({environment or 'defaults'}) in {time.monotonic() - started:.0f} s")
    wait_http(f"http://127.0.0.1:{PORT}/predict", b'{"features":[5.1,3.5,1.4,0.2]}')


def metrics_cost(results: dict[str, Any]) -> None:
    """Distinct rows at 64 connections with the API's metrics off and on, alternated twice (the
    machine's own drift then weighs on both alike); the cost is the difference of the medians."""
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
    for state in ("off", "on", "off", "on"):
        restart_api(METRICS_ENABLED="false" if state == "off" else "true")
        wrk(api_url(), 64, "berth", "distinct", seconds=3)  # warm-up
        point = wrk(api_url(), 64, "berth", "distinct")
        runs[state].append(point)
        log(f"metrics {state:>3}: {point['rps']:>8.0f} req/s  p99 {point['p99_ms']:.2f} ms")
    median = {state: statistics.median(p["rps"] for p in points) for state, points in runs.items()}
    p99 = {state: statistics.median(p["p99_ms"] for p in points) for state, points in runs.items()}
    cost = round(100 * (median["off"] - median["on"]) / median["off"], 1)
    results["metrics_cost"] = {
        "rps_off": median["off"],
        "rps_on": median["on"],
        "p99_ms_off": p99["off"],
        "p99_ms_on": p99["on"],
        "cost_pct": cost,
        "runs": runs,
    }
    log(f"metrics cost at c=64: {cost}% of req/s")


# The loads the cache's cost is measured on: goal 3's (100-row requests, 8 connections) and the
# side-by-side table's (distinct single rows, 64 connections); (load, connections, rows/request)
CACHE_LOADS = (("batch", 8, 100), ("distinct", 64, 1))


def cache_cost(results: dict[str, Any]) -> None:
    """The cache's cost where no row repeats: each of CACHE_LOADS with no cache
    (CACHE_ENABLED=false) and with the demo model cached whatever its speed
    (CACHE_MIN_ROW_US=0), alternated twice, every run's rows stored before the next starts; the
    run of median rows/s of each kept, with each service's CPU per row until its rows were
    stored. Also what the default policy decided for the demo model, and why."""
    ledger = ledger_containers()
    runs: dict[str, list[dict[str, Any]]] = {}
    for state in ("off", "on", "off", "on"):
        restart_api(**({"CACHE_ENABLED": "false"} if state == "off" else {"CACHE_MIN_ROW_US": "0"}))
        container = api_container()
        url = api_url()
        for load, concurrency, rows in CACHE_LOADS:
            wrk(url, concurrency, "berth", load, seconds=3)  # warm-up
            now = datetime.now(UTC).isoformat()
            in_api("lag", now, now)  # waits until the warm-up's rows are stored
            since = datetime.now(UTC).isoformat()
            before = stack_cpu_us(ledger)
            point = measured(container, url, concurrency, "berth", load, rows)
            until = datetime.now(UTC).isoformat()
            point["ledger"] = in_api("lag", since, until)
            point["cpu_us_per_row"] = cpu_per_row(point, rows, before, stack_cpu_us(ledger))
            point.update(load=load, cache=state)
            runs.setdefault(f"{load} c={concurrency}, cache {state}", []).append(point)
            log(
                f"cache {state:>3}, {load:>8} c={concurrency:<2} {point['rows_per_s']:>8,} rows/s"
                f"  p99 {point['p99_ms']:.2f} ms  CPU us per row {point['cpu_us_per_row']}"
            )
    restart_api()
    results["cache_cost"] = {
        label: sorted(points, key=lambda p: p["rows_per_s"])[(len(points) - 1) // 2]
        for label, points in runs.items()
    }
    with urllib.request.urlopen(api_url("/v1/models/iris"), timeout=10) as response:
        results["cache_policy"] = json.load(response)["serving"]


def worker_backlog(results: dict[str, Any]) -> None:
    log(f"worker: stopping it, queueing {BACKLOG_ROWS} rows, starting it")
    run([*COMPOSE, "stop", "worker"])
    tag = f"w{random.randrange(10**6)}"
    filled = in_api("fill", "--rows", str(BACKLOG_ROWS), "--tag", tag, script="backlog.py")
    run([*COMPOSE, "start", "worker"])
    drained = in_api(
        "drain",
        "--expect",
        str(BACKLOG_ROWS),
        "--tag",
        tag,
        "--timeout",
        "600",
        script="backlog.py",
    )
    results["worker_backlog"] = {"filled": filled, "drained": drained}
    log(f"worker: {json.dumps(drained)}")


# The peers, each alone on the machine: what people deploy by hand (Flask), the servers Berth is
# compared with, each with its adaptive batching (MLServer, BentoML at 1 and 2 workers: its best
# here is reported), and the HTTP ceiling (a bare ASGI app answering a constant, run as Berth
# is: uvicorn, httptools, 2 processes, in a container). `batch`: the server takes 100-row requests
# (the Flask tutorial app reads one row).
BASELINE_SERVERS: dict[str, dict[str, Any]] = {
    "flask-gunicorn-w2": {
        "image": "berth-bench-flask",
        "dir": "flask",
        "port": "8000",
        "path": "/predict",
        "format": "berth",
        "batch": False,
    },
    "mlserver-adaptive-batching": {
        "image": "berth-bench-mlserver",
        "dir": "mlserver",
        "port": "8080",
        "path": "/v2/models/iris-batched/infer",
        "format": "v2",
        "batch": True,
    },
    "mlserver": {
        "image": "berth-bench-mlserver",
        "dir": "mlserver",
        "port": "8080",
        "path": "/v2/models/iris/infer",
        "format": "v2",
        "batch": True,
    },
    "bentoml-adaptive-batching-w1": {
        "image": "berth-bench-bentoml",
        "dir": "bentoml",
        "port": "3000",
        "path": "/predict",
        "format": "bentoml",
        "env": {"BENTOML_WORKERS": "1"},
        "batch": True,
    },
    "bentoml-adaptive-batching-w2": {
        "image": "berth-bench-bentoml",
        "dir": "bentoml",
        "port": "3000",
        "path": "/predict",
        "format": "bentoml",
        "env": {"BENTOML_WORKERS": "2"},
        "batch": True,
    },
    "bare-asgi-uvicorn-w2": {
        "image": "berth-bench-asgi",
        "dir": "asgi",
        "port": "8000",
        "path": "/predict",
        "format": "berth",
        "batch": True,
    },
}
FIRST_ROW = "[5.1,3.5,1.4,0.2]"
READY_BODIES = {
    "berth": b'{"features":' + FIRST_ROW.encode() + b"}",
    "bentoml": b'{"features":[' + FIRST_ROW.encode() + b"]}",
}
V2_BODY = (
    b'{"inputs":[{"name":"predict","shape":[1,4],"datatype":"FP64","data":[5.1,3.5,1.4,0.2]}]}'
)

EXPORT_PICKLE = (
    "import joblib; from pathlib import Path; from berth_api.bundles.bundle import load_bundle; "
    "bundle = Path('/models/iris/1'); "
    "joblib.dump(load_bundle(bundle).model, bundle / 'model.joblib')"
)


def baselines(results: dict[str, Any]) -> None:
    results["baselines"] = {}
    for image, directory in {(s["image"], s["dir"]) for s in BASELINE_SERVERS.values()}:
        log(f"building {image}")
        results.setdefault("baseline_builds_s", {})[image] = timed(
            ["docker", "build", "-q", "-t", image, str(BENCH / "baselines" / directory)]
        )
    # The baselines read a pickle, as their tutorials do, at /models/iris/1/model.joblib; Berth's
    # bundle holds its model in skops' format, so the same fitted model is pickled beside it (the
    # api reads only the file its metadata names).
    run([*COMPOSE, "run", "--rm", "--no-deps", "seed-model", "python", "-c", EXPORT_PICKLE])
    run([*COMPOSE, "stop", "api", "worker"])  # the baselines get the machine to themselves
    for name, server in BASELINE_SERVERS.items():
        container = f"berth-bench-{name}"
        run(["docker", "rm", "-f", container], check=False)
        # Berth's own model file, read-only: every server runs the very same model
        mount = f"{PROJECT}_models:/models:ro"
        environment = [f"--env={k}={v}" for k, v in server.get("env", {}).items()]
        run(
            ["docker", "run", "-d", "--name", container, "-v", mount, *environment, server["image"]]
        )
        try:
            url = f"http://{container_ip(container)}:{server['port']}{server['path']}"
            fmt = server["format"]
            wait_http(url, V2_BODY if fmt == "v2" else READY_BODIES[fmt])
            wrk(url, 8, fmt, "distinct", seconds=3)
            points = []
            for concurrency in CONCURRENCY:
                point = measured(container, url, concurrency, fmt, "distinct")
                points.append(point)
                log(
                    f"{name:>28} c={concurrency:<2} {point['rps']:>8.0f} req/s  "
                    f"p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms  "
                    f"errors {point['errors']}  {point['cpu_us_per_request']} us CPU/request"
                )
            results["baselines"][name] = points
            if server["batch"]:
                point = measured(container, url, 8, fmt, "batch", rows=100)
                results.setdefault("baseline_batch", {})[name] = point
                log(
                    f"{name:>28} batch c=8 {point['rps']:>8.0f} req/s  "
                    f"{point['rows_per_s']:>9,} rows/s  p99 {point['p99_ms']:.2f} ms  "
                    f"errors {point['errors']}"
                )
        finally:
            run(["docker", "rm", "-f", container], check=False)
    run([*COMPOSE, "start", "api", "worker"])


def image_sizes() -> dict[str, int]:
    sizes = {}
    for image in (
        "berth-api:latest",
        "berth-worker:latest",
        # the api image with the packaging-time converters: models are packaged with it
        "berth-packager:latest",
        "python:3.11-slim-bookworm",
        *(f"{image}:latest" for image in sorted({s["image"] for s in BASELINE_SERVERS.values()})),
    ):
        out = run(["docker", "image", "inspect", "-f", "{{.Size}}", image], check=False).strip()
        if out.isdigit():
            sizes[image] = round(int(out) / 1e6)
    return sizes


def point_at(points: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    return next(p for p in points if p["concurrency"] == concurrency)


def headline(results: dict[str, Any]) -> list[str]:
    """The side-by-side table at 64 connections, distinct rows, and the goals held against it:
    the defaults within 15 % of Berth's best, 3x MLServer and 6x BentoML (both batching), 30 %
    of the bare ASGI app with p99 under 50 ms and ledger lag p99 under 1 s, and 100-row batches
    at 100,000 rows/s served and stored at 8 connections."""
    table = results.get("configurations", [])
    if not table:
        return []
    lines = [
        "",
        "## Side by side: 64 connections, distinct single rows (ledger on for Berth)",
        "",
        "Berth: the run of median req/s of each configuration's rounds (all rounds listed).",
        "",
        "CPU us/request is the server container's; docker-proxy's, the userland forwarder that"
        " carries the published port on 127.0.0.1, is the process's own, outside the container.",
        "",
        "| target | req/s | p99 ms | CPU us/request | docker-proxy CPU us/request |"
        " ledger lag p99 ms | req/s, each round |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for p in table:
        rounds = " / ".join(f"{rps:,.0f}" for rps in p.get("rps_rounds", [p["rps"]]))
        proxy = p.get("proxy_cpu_us_per_request")
        lines.append(
            f"| Berth, {p['settings']}, {p['through']} | {p['rps']:,.0f} | {p['p99_ms']:.1f} | "
            f"{p['cpu_us_per_request']} | {'' if proxy is None else proxy} | "
            f"{p['ledger']['lag_p99_ms']:,.0f} | {rounds} |"
        )
    peers = {name: point_at(points, 64) for name, points in results.get("baselines", {}).items()}
    for name, p in peers.items():
        lines.append(
            f"| {name} | {p['rps']:,.0f} | {p['p99_ms']:.1f} | {p['cpu_us_per_request']} | | | |"
        )
    defaults = next(
        p for p in table if p["settings"] == "make up defaults" and p["through"] == "published port"
    )
    best = max(table, key=lambda p: p["rps"])
    goals: dict[str, Any] = {
        "defaults_share_of_best_pct": round(100 * defaults["rps"] / best["rps"], 1),
        "best": f"{best['settings']}, {best['through']}",
    }
    lines += ["", "## Goals", ""]
    lines.append(
        f"- `make up` defaults, published port: {defaults['rps']:,.0f} req/s,"
        f" {goals['defaults_share_of_best_pct']} % of Berth's best ({goals['best']},"
        f" {best['rps']:,.0f} req/s); goal: at least 85 %"
    )
    if (proxy := defaults.get("proxy_cpu_us_per_request")) is not None:
        # why the published port trails the bridge: a second process per request, on the same cores
        goals["defaults_docker_proxy_cpu_us_per_request"] = proxy
        lines.append(
            f"  - through 127.0.0.1, docker-proxy used {proxy} us of CPU per request beside the"
            f" API's {defaults['cpu_us_per_request']}: clients on other machines, or"
            ' `"userland-proxy": false` in the Docker daemon, skip it (README, Performance)'
        )
    else:
        goals["defaults_docker_proxy_cpu_us_per_request"] = None
        lines.append(
            "  - no docker-proxy for the published port on this host: the daemon runs with"
            ' `"userland-proxy": false` (the kernel forwards the port), or in a VM, out of sight'
        )

    def best_of(prefix: str) -> tuple[str, dict[str, Any]] | None:
        found = [(n, p) for n, p in peers.items() if n.startswith(prefix)]
        return max(found, key=lambda item: item[1]["rps"]) if found else None

    for prefix, goal in (("mlserver-adaptive", 3), ("bentoml-adaptive", 6)):
        if (peer := best_of(prefix)) and peer[1]["rps"]:
            ratio = defaults["rps"] / peer[1]["rps"]
            goals[f"defaults_over_{prefix}"] = round(ratio, 2)
            lines.append(
                f"- defaults / {peer[0]}: {ratio:.1f}x req/s (p99 {defaults['p99_ms']:.1f} ms"
                f" vs {peer[1]['p99_ms']:.1f} ms); goal: at least {goal}x"
            )
    if (bare := best_of("bare-asgi")) and bare[1]["rps"]:
        # the same network path as the bare app: the bridge address, ledger on
        bridged = [p for p in table if p["through"] == "bridge"]
        fastest = max(bridged, key=lambda p: p["rps"])
        share = 100 * fastest["rps"] / bare[1]["rps"]
        goals["best_share_of_bare_asgi_pct"] = round(share, 1)
        lines.append(
            f"- Berth ({fastest['settings']}, bridge) / bare ASGI app: {share:.1f} % of"
            f" {bare[1]['rps']:,.0f} req/s, p99 {fastest['p99_ms']:.1f} ms, ledger lag p99"
            f" {fastest['ledger']['lag_p99_ms']:,.0f} ms, {fastest['cpu_us_per_request']} us CPU"
            f" per request against the bare app's {bare[1]['cpu_us_per_request']};"
            " goal: at least 30 %, p99 under 50 ms, lag p99 under 1,000 ms"
        )
    batch = point_at(results.get("berth", {}).get("batch", []), 8) if results.get("berth") else None
    if batch:
        stored = batch["ledger"]["rows"]
        backlog = batch["backlog_at_end"]
        goals["batch_rows_per_s_c8"] = batch["rows_per_s"]
        lines.append(
            f"- 100-row requests at 8 connections: {batch['rows_per_s']:,} rows/s served"
            f" ({batch['rps']:,.0f} req/s), {stored:,} rows stored, backlog at the end"
            f" {backlog['unread'] + backlog['pending']} entries, ledger lag p99"
            f" {batch['ledger']['lag_p99_ms']:,.0f} ms; goal: at least 100,000 rows/s"
        )
        if batch.get("cpu_us_per_row"):
            shares = ", ".join(f"{k} {v}" for k, v in batch["cpu_us_per_row"].items())
            lines.append(f"  - CPU us per row served and stored: {shares}")
    policy = results.get("cache_policy")
    if policy:
        lines.append(
            f"  - the defaults' cache policy for the demo model: cache {policy['cache']}"
            f" ({policy['cache_reason']})"
        )
    for label, p in results.get("cache_cost", {}).items():
        shares = p["cpu_us_per_row"]
        lines.append(
            f"  - {label} (off: CACHE_ENABLED=false, on: CACHE_MIN_ROW_US=0; no row repeated):"
            f" {p['rows_per_s']:,} rows/s,"
            f" p99 {p['p99_ms']:.1f} ms, CPU us per row: api {shares.get('api')}, total"
            f" {shares.get('total')}"
        )
    for name, p in results.get("baseline_batch", {}).items():
        lines.append(
            f"  - {name}, the same load: {p['rows_per_s']:,} rows/s, p99 {p['p99_ms']:.1f} ms"
        )
    memory = results.get("api_memory")
    if memory:
        processes = ", ".join(f"{p['role']} {p['rss_mb']} MB" for p in memory["processes"])
        lines.append(f"- API resident memory per process, demo model loaded: {processes}")
    sizes = results.get("image_sizes_mb", {})
    if sizes:
        lines.append("- images: " + ", ".join(f"{image} {mb:,} MB" for image, mb in sizes.items()))
    results["goals"] = goals
    return lines


def summary(results: dict[str, Any]) -> list[str]:
    lines = headline(results)
    lines += ["", "## Berth, `make up` defaults, bridge address (ledger on)", ""]
    lines.append(
        "| load | conc. | req/s | rows/s | p50 ms | p99 ms | errors | CPU us/req | stored rows |"
        " lag p50 ms | lag p99 ms | backlog at end |"
    )
    lines.append("| --- " + "| ---: " * 11 + "|")
    for mode, points in results.get("berth", {}).items():
        for p in points:
            backlog = p["backlog_at_end"]
            lines.append(
                f"| {mode} | {p['concurrency']} | {p['rps']:,.0f} | {p['rows_per_s']:,} |"
                f" {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} |"
                f" {p['cpu_us_per_request']} | {p['ledger']['rows']:,} |"
                f" {p['ledger']['lag_p50_ms']} | {p['ledger']['lag_p99_ms']} |"
                f" {backlog['unread'] + backlog['pending']} |"
            )
    lines += [
        "",
        "## Where a row's CPU goes (us per row served, until it is stored), loaded runs",
        "",
        "At 1 and 8 connections of single rows the stack's background work (health checks,",
        "heartbeats, the AOF's fsync, the probe's queries) outweighs the rows; they are left out.",
        "",
        "| load | conc. | api | worker | redis | postgres | total |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, points in results.get("berth", {}).items():
        for p in points:
            shares = p.get("cpu_us_per_row") or {}
            if p["concurrency"] < 64 and ROWS_PER_REQUEST.get(mode, 1) == 1:
                continue
            lines.append(
                f"| {mode} | {p['concurrency']} | "
                + " | ".join(str(shares.get(k, "")) for k in ("api", *LEDGER_PATH, "total"))
                + " |"
            )
    if results.get("baselines"):
        lines += [
            "",
            "## Baselines (distinct rows)",
            "",
            "| server | conc. | req/s | p50 ms | p99 ms | errors | CPU us/req |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, points in results["baselines"].items():
            for p in points:
                lines.append(
                    f"| {name} | {p['concurrency']} | {p['rps']:,.0f} | "
                    f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} |"
                    f" {p['cpu_us_per_request']} |"
                )
        berth64 = point_at(results["berth"]["distinct"], 64)
        lines += ["", "## Ratios at concurrency 64, distinct rows", ""]
        for name, points in results["baselines"].items():
            base = point_at(points, 64)
            ratio = berth64["rps"] / base["rps"] if base["rps"] else float("inf")
            lines.append(
                f"- Berth / {name}: {ratio:.1f}x requests/s "
                f"(p99 {berth64['p99_ms']:.1f} ms vs {base['p99_ms']:.1f} ms)"
            )
        v2 = results["berth"].get("v2-distinct")
        batched = results["baselines"].get("mlserver-adaptive-batching")
        if v2 and batched and point_at(batched, 64)["rps"]:
            v2_64, base = point_at(v2, 64), point_at(batched, 64)
            lines.append(
                f"- Berth's V2 route / mlserver-adaptive-batching, the same V2 body: "
                f"{v2_64['rps'] / base['rps']:.1f}x requests/s "
                f"(p99 {v2_64['p99_ms']:.1f} ms vs {base['p99_ms']:.1f} ms)"
            )
        results["ratios_c64_distinct"] = {
            name: round(berth64["rps"] / point_at(points, 64)["rps"], 2)
            for name, points in results["baselines"].items()
            if point_at(points, 64)["rps"]
        }
    floor = results.get("floor", {})
    if floor:
        lines += ["", "## The model call alone (in-process floor)", ""]
        for engine in ("onnxruntime", "scikit-learn"):
            if engine in floor:
                one, hundred = floor[engine]["1_row"], floor[engine]["100_rows"]
                lines.append(
                    f"- {engine}: 1 row p50 {one['p50_us']} us (p99 {one['p99_us']} us); "
                    f"100 rows p50 {hundred['p50_us']} us"
                )
        c1 = point_at(results["berth"]["distinct"], 1)
        served = floor["served_engine"]
        gap = c1["p50_ms"] * 1000 - floor[served]["1_row"]["p50_us"]
        results["c1_p50_above_floor_us"] = round(gap)
        lines.append(
            f"- Berth at concurrency 1, distinct rows: p50 {c1['p50_ms']} ms, "
            f"{gap / 1000:.2f} ms above the model call ({served})"
        )
    audit = results.get("audit")
    if audit:
        lines += ["", "## Ledger audit of the Berth runs (make audit)", "", "```"]
        lines += [audit["report"].rstrip(), "```"]
    worker = results.get("worker_backlog", {}).get("drained")
    if worker:
        lines += ["", f"## Worker on a backlog: {json.dumps(worker)}"]
    lines += [
        "",
        f"## make up: {json.dumps(results.get('make_up_s', {}))}",
        f"## images (MB): {json.dumps(results.get('image_sizes_mb', {}))}",
        "## metrics, distinct rows at c=64 (median of two runs each): "
        + json.dumps({k: v for k, v in results.get("metrics_cost", {}).items() if k != "runs"}),
        "",
    ]
    return lines


def main() -> int:
    ensure_wrk()
    started = datetime.now(UTC)
    results: dict[str, Any] = {
        "started": started.isoformat(),
        "machine": machine(),
        "seconds_per_run": SECONDS,
    }
    make = ["make", "--no-print-directory", f"COMPOSE={' '.join(COMPOSE)}"]
    # `make up`'s settings, but for the port: the bench measures what a user gets. Written anew
    # each run (its stack and volumes are too), so no setting of an earlier bench stays.
    ENV_FILE.unlink(missing_ok=True)
    run([str(ROOT / "scripts" / "init-env.sh"), str(ENV_FILE), f"API_PORT={PORT}"])
    log("removing any earlier bench stack and its volumes")
    timed([*make, "clean"])
    log("building images")
    results["build_s"] = timed([*COMPOSE, "build"])
    log("make up, cold (no containers, empty volumes)")
    cold = timed([*make, "up"])
    log("make up, warm (already up)")
    warm = timed([*make, "up"])
    results["make_up_s"] = {"cold_fresh_volumes": cold, "warm": warm}
    try:
        wait_http(f"http://127.0.0.1:{PORT}/predict", b'{"features":[5.1,3.5,1.4,0.2]}')
        log("the model call alone, inside the api container")
        results["floor"] = in_api("floor")
        berth_runs(results)
        # every request of the runs above served and stored? (before the synthetic backlog,
        # whose rows were never served)
        audit = subprocess.run(
            [
                *COMPOSE,
                "exec",
                "-T",
                "api",
                "python",
                "-m",
                "berth_api.ledger.audit",
                "--since",
                started.isoformat(),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        results["audit"] = {"exit_code": audit.returncode, "report": audit.stdout}
        configurations(results)
        metrics_cost(results)
        cache_cost(results)
        worker_backlog(results)
        if BASELINES:
            baselines(results)
        results["image_sizes_mb"] = image_sizes()
    finally:
        if not KEEP:
            log("tearing the bench stack down")
            run([*make, "clean"], check=False)
    report = "\n".join(summary(results))  # also adds the ratios to the results
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    name = f"bench-{started:%Y%m%dT%H%M%SZ}"
    for stem in (name, "latest"):
        (out_dir / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
        (out_dir / f"{stem}.md").write_text(report + "\n")
    print(report)
    print(f"results: bench-results/{name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
