#!/usr/bin/env python3
"""`make bench`: Berth against the servers people would otherwise pick, on this machine.

Brings up its own compose project (`berth-bench`, own volumes and port, torn down afterwards),
times `make up` cold and warm, and drives every server with wrk from a separate process: one
request after another on 1, 8 and 64 connections, each run BENCH_SECONDS long, with

  distinct     a new row every request (every one a cache miss: the model runs)
  repeated     the same row every request (cache hits)
  batch        100 new rows per request
  v2-distinct  distinct rows in the Open Inference Protocol V2 body that MLServer gets

Berth runs all three; the baselines (the Flask tutorial app under gunicorn -w 2, Seldon
MLServer with its scikit-learn runtime, with and without adaptive batching) run `distinct`,
the load the targets are set for, while Berth's services are stopped. After each Berth run it
waits for the ledger to drain and reads the served -> stored delay of that run's rows from
PostgreSQL; then it measures the worker alone on a 200,000-row backlog, the model call alone
inside the api container, and the image sizes. It prints tables and writes everything as JSON
to bench-results/.

Settings (environment): BENCH_SECONDS (10), BENCH_API_PORT (18200), BENCH_BACKLOG_ROWS
(200000), BENCH_BASELINES (1; 0 skips them), BENCH_KEEP (0; 1 leaves the stack up).
Only the standard library: it runs on the host with any python3.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
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


def api_url(path: str = "/predict") -> str:
    container = run([*COMPOSE, "ps", "-q", "api"]).strip()
    return f"http://{container_ip(container)}:8000{path}"


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
    for name, path, fmt, mode in BERTH_LOADS:
        url = api_url(path)
        results["berth"][name] = []
        for concurrency in CONCURRENCY:
            since = datetime.now(UTC).isoformat()
            point = wrk(url, concurrency, fmt, mode)
            until = datetime.now(UTC).isoformat()
            point["backlog_at_end"] = in_api("backlog")
            point["ledger"] = in_api("lag", since, until)
            results["berth"][name].append(point)
            log(
                f"berth {name:>11} c={concurrency:<2} {point['rps']:>8.0f} req/s  "
                f"p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms  "
                f"errors {point['errors']}  stored {point['ledger']['rows']} rows, "
                f"lag p99 {point['ledger']['lag_p99_ms']} ms"
            )


def restart_api(**environment: str) -> None:
    """Recreates the api container with these settings (compose passes them through)."""
    subprocess.run(
        [*COMPOSE, "up", "--detach", "--no-deps", "--wait", "api"],
        cwd=ROOT,
        env={**os.environ, **environment},
        check=True,
        capture_output=True,
    )
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


BASELINE_SERVERS: dict[str, dict[str, str]] = {
    "flask-gunicorn-w2": {
        "image": "berth-bench-flask",
        "dir": "flask",
        "port": "8000",
        "path": "/predict",
        "format": "berth",
    },
    "mlserver-adaptive-batching": {
        "image": "berth-bench-mlserver",
        "dir": "mlserver",
        "port": "8080",
        "path": "/v2/models/iris-batched/infer",
        "format": "v2",
    },
    "mlserver": {
        "image": "berth-bench-mlserver",
        "dir": "mlserver",
        "port": "8080",
        "path": "/v2/models/iris/infer",
        "format": "v2",
    },
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
        run(["docker", "run", "-d", "--name", container, "-v", mount, str(server["image"])])
        try:
            url = f"http://{container_ip(container)}:{server['port']}{server['path']}"
            body = V2_BODY if server["format"] == "v2" else b'{"features":[5.1,3.5,1.4,0.2]}'
            wait_http(url, body)
            wrk(url, 8, str(server["format"]), "distinct", seconds=3)
            points = []
            for concurrency in CONCURRENCY:
                point = wrk(url, concurrency, str(server["format"]), "distinct")
                points.append(point)
                log(
                    f"{name:>26} c={concurrency:<2} {point['rps']:>8.0f} req/s  "
                    f"p50 {point['p50_ms']:.2f} ms  p99 {point['p99_ms']:.2f} ms  "
                    f"errors {point['errors']}"
                )
            results["baselines"][name] = points
        finally:
            run(["docker", "rm", "-f", container], check=False)
    run([*COMPOSE, "start", "api", "worker"])


def image_sizes() -> dict[str, int]:
    sizes = {}
    for image in (
        "berth-api:latest",
        "berth-worker:latest",
        "python:3.11-slim-bookworm",
        "berth-bench-flask:latest",
        "berth-bench-mlserver:latest",
    ):
        out = run(["docker", "image", "inspect", "-f", "{{.Size}}", image], check=False).strip()
        if out.isdigit():
            sizes[image] = round(int(out) / 1e6)
    return sizes


def point_at(points: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
    return next(p for p in points if p["concurrency"] == concurrency)


def summary(results: dict[str, Any]) -> list[str]:
    lines = ["", "## Berth (ledger on: every request stored)", ""]
    lines.append(
        "| load | conc. | req/s | p50 ms | p99 ms | errors | stored rows | "
        "lag p50 ms | lag p99 ms | backlog at end |"
    )
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, points in results.get("berth", {}).items():
        for p in points:
            backlog = p["backlog_at_end"]
            lines.append(
                f"| {mode} | {p['concurrency']} | {p['rps']:,.0f} | {p['p50_ms']:.2f} | "
                f"{p['p99_ms']:.2f} | {p['errors']} | {p['ledger']['rows']:,} | "
                f"{p['ledger']['lag_p50_ms']} | {p['ledger']['lag_p99_ms']} | "
                f"{backlog['unread'] + backlog['pending']} |"
            )
    if results.get("baselines"):
        lines += [
            "",
            "## Baselines (distinct rows)",
            "",
            "| server | conc. | req/s | p50 ms | p99 ms | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, points in results["baselines"].items():
            for p in points:
                lines.append(
                    f"| {name} | {p['concurrency']} | {p['rps']:,.0f} | "
                    f"{p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} |"
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
    if not ENV_FILE.exists():
        run(
            [
                str(ROOT / "scripts" / "init-env.sh"),
                str(ENV_FILE),
                f"API_PORT={PORT}",
                "ACCESS_LOG=false",
                "LOG_LEVEL=WARNING",
            ]
        )
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
        metrics_cost(results)
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
