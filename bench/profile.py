#!/usr/bin/env python3
"""`make profile` (python3 -m bench.profile): where the API's CPU goes under load, sampled by
py-spy from outside.

Drives the bench stack's api (compose project `berth-bench`; `BENCH_KEEP=1 make bench` leaves it
up, or this brings it up with `make up`'s settings and tears it down after, unless BENCH_KEEP=1)
with wrk, distinct rows at PROFILE_CONNECTIONS
(64) connections, and meanwhile samples every API process with py-spy, run in a container of its
own that shares the api container's process namespace (the image and the code measured are
untouched). py-spy means to sample only threads that are running, so that the figures are shares
of the CPU the API spends, not of wall time. In the api container it has counted blocked threads
as running (the model's thread waiting for work, uvicorn's health-check thread reading its pipe),
so stacks whose top frame is such a wait (`IDLE_WAITS`) are left out of the shares, and their
count is printed.

Writes bench-results/profile-<time>.txt, the collapsed stacks (one line per distinct stack with
its sample count: what speedscope.app and inferno-flamegraph read), and prints the frames that
hold the most samples on their own (self) and below them (inclusive), and the share of each
package. Settings (environment): PROFILE_SECONDS (20), PROFILE_CONNECTIONS (64),
PROFILE_RATE (250 samples/s per process), PROFILE_LOAD (`distinct` single rows, or `batch`:
requests of 100 distinct rows, the bench's batch load).
"""

from __future__ import annotations

import os
import re
import sys
import threading
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from bench.run import (
    BENCH,
    COMPOSE,
    ENV_FILE,
    KEEP,
    PORT,
    ROOT,
    ROWS_PER_REQUEST,
    api_container,
    api_url,
    ensure_wrk,
    log,
    run,
    wait_http,
    wrk,
)

SECONDS = int(os.environ.get("PROFILE_SECONDS", "20"))
CONNECTIONS = int(os.environ.get("PROFILE_CONNECTIONS", "64"))
RATE = int(os.environ.get("PROFILE_RATE", "250"))
LOAD = os.environ.get("PROFILE_LOAD", "distinct")
IMAGE = "berth-bench-pyspy"
TOP = 25
# "function (path/to/file.py:123)", as py-spy writes a frame
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")
# where a file's package starts in a path: after site-packages/, or the stdlib's directory
PACKAGE = re.compile(r"(?:site-packages|dist-packages|python3\.\d+)/(?P<package>[^/]+)")
# Frames that, on top of a stack, mean the thread is blocked, not running: (function or method
# name, without its class; the end of its file's path). A thread pool's worker waiting for work
# (its work runs in a frame above `_worker`), a condition or event waited on, uvicorn's
# health-check thread reading its pipe, a selector's poll (the supervisor, the metrics server).
IDLE_WAITS = frozenset(
    {
        ("_worker", "concurrent/futures/thread.py"),
        ("wait", "threading.py"),
        ("_recv", "multiprocessing/connection.py"),
        ("select", "selectors.py"),
    }
)


MAKE = ["make", "--no-print-directory", f"COMPOSE={' '.join(COMPOSE)}"]


def stack_up() -> bool:
    """The bench stack, as `make bench` leaves it with BENCH_KEEP=1, or as `make up` makes it;
    True if it was brought up here (and is then torn down afterwards, unless BENCH_KEEP=1)."""
    if not ENV_FILE.exists():
        run([str(ROOT / "scripts" / "init-env.sh"), str(ENV_FILE), f"API_PORT={PORT}"])
    started = not run([*COMPOSE, "ps", "-q", "api"]).strip()
    if started:
        log("bringing the bench stack up (make up)")
        run([*MAKE, "up"])
    wait_http(f"http://127.0.0.1:{PORT}/predict", b'{"features":[5.1,3.5,1.4,0.2]}')
    return started


def supervisor_pid(container: str) -> int:
    """The API's first Python process in the container's own numbering (`python -m berth_api`,
    which starts the API_WORKERS processes py-spy follows as its subprocesses)."""
    out = run(["docker", "exec", container, "sh", "-c", "grep -l berth_api /proc/[0-9]*/cmdline"])
    pids = sorted(int(Path(line).parent.name) for line in out.split())
    if not pids:
        raise SystemExit("profile: no berth_api process in the api container")
    return pids[0]


def sample(container: str, pid: int, out_dir: Path, name: str) -> None:
    run(
        [
            "docker", "run", "--rm", f"--pid=container:{container}", "--cap-add=SYS_PTRACE",
            "-v", f"{out_dir}:/out", IMAGE,
            "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
            "--rate", str(RATE), "--duration", str(SECONDS),
            "--format", "raw", "--output", f"/out/{name}",
        ]
    )  # fmt: skip


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if frames and count.isdigit():
            stacks.append((frames.split(";"), int(count)))
    return stacks


def package_of(frame: str) -> str:
    match = FRAME.match(frame)
    path = match.group("file") if match else frame
    found = PACKAGE.search(path)
    if found:
        return found.group("package").removesuffix(".py")
    return path.split("/")[0] or path


def is_idle(frame: str) -> bool:
    """Whether `frame`, on top of a stack, is a thread waiting (see IDLE_WAITS)."""
    match = FRAME.match(frame)
    if match is None:
        return False
    function = match.group("function").rpartition(".")[2]  # py-spy writes Class.method
    path = match.group("file")
    return any(function == name and path.endswith(file) for name, file in IDLE_WAITS)


def summary(stacks: list[tuple[list[str], int]]) -> list[str]:
    own: Counter[str] = Counter()
    below: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    idle = native = 0
    for frames, count in stacks:
        # py-spy's raw stacks start with the process and thread: keep only code frames
        code = [f for f in frames if FRAME.match(f)]
        if not code:  # a thread with no Python on its stack (a library's own thread)
            native += count
            continue
        if is_idle(code[-1]):
            idle += count
            continue
        own[code[-1]] += count
        packages[package_of(code[-1])] += count
        for frame in set(code):
            below[frame] += count

    running = sum(own.values()) + native
    total = running or 1

    def share(count: int) -> str:
        return f"{100 * count / total:5.1f} %"

    lines = [
        f"{running:,} samples of running API threads, {native:,} of them with no Python frame "
        f"({idle:,} more of threads waiting, left out)",
        "",
        "## self (the frame on top)",
    ]
    lines += [f"{share(c)}  {frame}" for frame, c in own.most_common(TOP)]
    lines += ["", "## inclusive (the frame anywhere in the stack)"]
    lines += [f"{share(c)}  {frame}" for frame, c in below.most_common(TOP)]
    lines += ["", "## self, by package"]
    lines += [f"{share(c)}  {package}" for package, c in packages.most_common(TOP)]
    return lines


def main() -> int:
    if LOAD not in ROWS_PER_REQUEST:
        raise SystemExit(f"PROFILE_LOAD must be one of {', '.join(ROWS_PER_REQUEST)}, not {LOAD!r}")
    ensure_wrk()
    started = stack_up()
    try:
        return profile()
    finally:
        if started and not KEEP:
            log("tearing the bench stack down")
            run([*MAKE, "clean"], check=False)


def profile() -> int:
    log(f"building {IMAGE}")
    run(["docker", "build", "-q", "-t", IMAGE, str(BENCH / "pyspy")])
    container = api_container()
    pid = supervisor_pid(container)
    out_dir = ROOT / "bench-results"
    out_dir.mkdir(exist_ok=True)
    name = f"profile-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.txt"
    url = api_url()
    wrk(url, CONNECTIONS, "berth", LOAD, seconds=3)  # warm-up
    log(f"wrk: {LOAD} load, {CONNECTIONS} connections; py-spy on pid {pid} and its children")
    load: dict[str, object] = {}
    driver = threading.Thread(
        target=lambda: load.update(wrk(url, CONNECTIONS, "berth", LOAD, SECONDS + 6))
    )
    driver.start()
    try:
        sample(container, pid, out_dir, name)
    finally:
        driver.join()
    log(f"load: {load.get('rps')} req/s, p99 {load.get('p99_ms')} ms (profiled, so slower)")
    report = summary(parse(out_dir / name))
    print("\n".join(report))
    print(f"\ncollapsed stacks: bench-results/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
