"""Outgrowing one machine: several API replicas and workers behind one gateway, and releases and
models switched, under load, without a request lost.

The module runs the faults project in the replicas layout (docker-compose.replicas.yml): api,
api-2 and api-3, each with its own spool volume, three workers, and the gateway, through which the
load goes. It switches the project to that layout for its tests and back to the single one after
them, pass or fail. Every test holds the ledger to the promise of the other scenarios (load.py,
test_faults.finish): each request answered 200 is stored exactly once, exactly as answered, with
the model version that answered it, and the figures of each run are printed (pytest -s).

- One API replica and one worker are SIGKILLed mid-load. The gateway sends new requests to the
  other replicas and the other workers claim the dead one's entries: only requests the dead
  replica had in hand may fail (502), and each of those is stored once at most.
- A new bundle (iris/2) is served by `make rollout` and rolled back by pinning
  MODEL_VERSIONS=iris=1 and `make rollout` again: no request fails.
- `make release` of two versions to a registry of the test's own, then `make deploy` of each and
  `make rollback`, every API replica replaced one at a time: no request fails.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.e2e.faults.conftest import (
    ENV_FILE_VARIABLE,
    RECOVERY_TIMEOUT_SECONDS,
    Container,
    FaultStack,
    Ledger,
    TableLock,
)
from tests.e2e.faults.load import BacklogSampler, Load, LoadPlan, LoadResults, stored_rows
from tests.e2e.faults.test_faults import (
    FAULT_AT,
    RATE,
    TRANSPORT_ERRORS,
    Window,
    finish,
    seconds_until,
)
from tests.e2e.stack import Compose, wait_until

HERE = Path(__file__).resolve().parent
LAYOUT = "docker-compose.yml:docker-compose.replicas.yml"
API_SERVICES = ("api", "api-2", "api-3")
# The gateway's names for them (deploy/gateway/haproxy.cfg).
SERVERS = ("api-1", "api-2", "api-3")
WORKERS = 3
GATEWAY_URL = "http://gateway:8000"
GATEWAY_STATS = "http://gateway:8404/stats;csv"
# HAProxy's notices about the replicas' state: "Server replicas/api-2 is DOWN, reason: ...",
# "... is going DOWN for maintenance (DNS timeout status)", "... changed its IP from ...",
# "backend replicas has no server available!".
GATEWAY_EVENT = re.compile(r"Server replicas/|backend replicas ")
VERSIONS = ("1.0.0", "1.1.0")
VERSION_LABEL = "org.opencontainers.image.version"
# A load long enough for any sequence of deploys; it is stopped once they are done.
LONG_LOAD_SECONDS = 600.0
# Load that goes on after the last step, so that what follows it is checked too.
TAIL_SECONDS = 5.0
MAKE_TIMEOUT_SECONDS = 900
# A second iris model, packaged as `make package` does, inside the packager image (seed-model).
TRAIN_IRIS_2 = """
import joblib
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from berth_api.bundles.package import main
data = load_iris(as_frame=True)
names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
features = data.data.set_axis(names, axis=1)
labels = data.target.map(dict(enumerate(data.target_names)))
model = RandomForestClassifier(n_estimators=20, random_state=7).fit(features, labels)
joblib.dump(model, "/tmp/iris-2.joblib")
raise SystemExit(main(["/tmp/iris-2.joblib", "--name", "iris", "--version", "2",
                       "--models-dir", "/models"]))
"""


class Replicas:
    """The faults project in the replicas layout, and its gateway's view of the replicas."""

    def __init__(self, stack: FaultStack) -> None:
        self.stack = stack

    def compose(self, *args: str, timeout: float = 180) -> str:
        return self.stack.compose(
            "--file", str(ROOT / "docker-compose.replicas.yml"), *args, timeout=timeout
        )

    def servers(self) -> dict[str, dict[str, str]]:
        """The gateway's `show stat` rows of the replicas, by server name."""
        response = httpx.get(GATEWAY_STATS, timeout=5)
        response.raise_for_status()
        rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
        return {row["svname"]: row for row in rows if row["svname"] in SERVERS}

    def all_serving(self) -> bool:
        try:
            servers = self.servers()
        except httpx.HTTPError:
            return False
        return set(servers) == set(SERVERS) and all(
            row["status"].startswith("UP") for row in servers.values()
        )

    def gateway_events(self) -> list[str]:
        """The gateway's log lines about its replicas changing state (DOWN, UP, maintenance,
        address changes, no server left), with their reasons: what a 502 or 503 needs explained."""
        log = self.compose("logs", "--no-log-prefix", "gateway")
        return [line for line in log.splitlines() if GATEWAY_EVENT.search(line)]

    def requests_served(self) -> dict[str, int]:
        """Requests each server has answered since the gateway started."""
        return {name: int(row["stot"]) for name, row in self.servers().items()}

    def image_versions(self) -> dict[str, set[str]]:
        """The release version (image label) each service's running containers were made from:
        '' for a local build."""
        versions: dict[str, set[str]] = {}
        for service in (*API_SERVICES, "worker"):
            for container in self.stack.running(service):
                label = docker(
                    "inspect",
                    "--format",
                    f'{{{{index .Config.Labels "{VERSION_LABEL}"}}}}',
                    container.id,
                )
                versions.setdefault(service, set()).add(label.strip())
        return versions

    def back_to_one(self) -> None:
        """The single layout again: one api publishing its port, one worker, no gateway."""
        self.compose("rm", "--stop", "--force", "api-2", "api-3", "gateway")
        self.stack.compose(
            "up", "--detach", "--no-deps", "--force-recreate", "--wait",
            "--wait-timeout", f"{RECOVERY_TIMEOUT_SECONDS:.0f}",
            "--scale", "worker=1", "api", "worker",
            timeout=RECOVERY_TIMEOUT_SECONDS + 60,
        )  # fmt: skip
        for volume in ("spool-2", "spool-3"):
            docker("volume", "rm", "--force", f"{self.stack.project}_{volume}")


class Releaser:
    """`make release`, `deploy`, `rollback` and `rollout` on the faults project, as people run
    them, with an env file and a deploy history of the test's own."""

    def __init__(self, project: str, directory: Path, registry: str = "") -> None:
        self.env_file = directory / "berth-faults.env"
        shutil.copyfile(os.environ[ENV_FILE_VARIABLE], self.env_file)
        self.history = directory / "deploy-history"
        self.registry = registry
        sha = os.environ.get("GIT_SHA", "")
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": os.environ.get("HOME", "/root"),
            "COMPOSE_PROJECT_NAME": project,
            "COMPOSE_FILE": LAYOUT,
            # not a git checkout here: the commit comes from make test-faults
            "GIT_SHA": sha if sha not in ("", "unknown") else "0000000000ff",
        }

    def make(self, target: str, *variables: str, env: Mapping[str, str] | None = None) -> float:
        """Runs the target; its own report lines are printed. Returns its seconds."""
        started = time.monotonic()
        result = subprocess.run(
            [
                "make", "--no-print-directory", "-C", str(ROOT), target,
                f"ENV_FILE={self.env_file}", f"DEPLOY_HISTORY={self.history}",
                *([f"REGISTRY={self.registry}"] if self.registry else []), *variables,
            ],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=MAKE_TIMEOUT_SECONDS,
            check=False,
        )  # fmt: skip
        seconds = time.monotonic() - started
        if result.returncode != 0:
            pytest.fail(
                f"make {target} {' '.join(variables)} exited {result.returncode}:\n"
                f"{result.stdout}{result.stderr}"
            )
        for line in result.stdout.splitlines():
            if line.startswith(("release:", "deploy:", "rollback:", "rollout:")):
                print(f"  {line}")
        return seconds

    def versions(self) -> list[str]:
        """The versions of the deploy history, oldest first."""
        lines = self.history.read_text().splitlines()
        return [line.split()[1] for line in lines if line.strip() and not line.startswith("#")]


def docker(*args: str) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def replicas(fault_stack: FaultStack) -> Iterator[Replicas]:
    replicas = Replicas(fault_stack)
    try:
        replicas.compose("build", "gateway", timeout=900)
        started = time.monotonic()
        replicas.compose(
            "up", "--detach", "--no-deps", "--wait",
            "--wait-timeout", f"{RECOVERY_TIMEOUT_SECONDS:.0f}",
            "--scale", f"worker={WORKERS}", *API_SERVICES, "worker", "gateway",
            timeout=RECOVERY_TIMEOUT_SECONDS + 60,
        )  # fmt: skip
        print(f"\n  replicas layout up in {time.monotonic() - started:.1f} s")
        yield replicas
    finally:
        replicas.back_to_one()


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    """A registry:2.8.2 on a free port of 127.0.0.1; what was pushed to it is untagged after."""
    compose = Compose(
        project=f"{os.environ['COMPOSE_PROJECT_NAME']}-registry", file=HERE / "registry.yml"
    )
    compose("down", "--volumes")
    compose("up", "--detach", "--wait")
    port = compose("port", "registry", "5000").stdout.strip().rsplit(":", 1)[1]
    address = f"localhost:{port}"
    try:
        yield address
    finally:
        compose("down", "--volumes")
        untag(address)


def untag(registry: str) -> None:
    """Removes this engine's tags of the registry's images (their layers stay, under other tags).
    Forced: after the last rollback the stack still runs a release until the module's teardown
    puts its local images back, and a tag in use is otherwise refused."""
    references = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}").split()
    ours = [reference for reference in references if reference.startswith(f"{registry}/")]
    if ours:
        docker("image", "rm", "--force", *ours)


def settle(replicas: Replicas, ledger: Ledger) -> None:
    """Every replica serving through the gateway, every worker up, the ledger drained: whatever
    an earlier test left stopped is started again."""
    replicas.compose(
        "up", "--detach", "--no-deps", "--no-recreate", "--scale", f"worker={WORKERS}",
        *API_SERVICES, "worker", "gateway",
        timeout=RECOVERY_TIMEOUT_SECONDS,
    )  # fmt: skip
    wait_until(
        replicas.all_serving,
        what="every replica to serve through the gateway",
        timeout=RECOVERY_TIMEOUT_SECONDS,
    )
    wait_until(
        lambda: len(replicas.stack.running("worker")) == WORKERS,
        what=f"{WORKERS} workers",
        timeout=60,
    )
    wait_until(ledger.database_up, what="PostgreSQL to answer", timeout=60)
    wait_until(
        lambda: (state := ledger.backlog()) is not None and state.drained,
        what="the ledger backlog to be empty",
        timeout=RECOVERY_TIMEOUT_SECONDS,
    )


def kill_holding_entries(stack: FaultStack, ledger: Ledger, victim: Container) -> set[str]:
    """SIGKILLs the worker `victim` while it holds entries it has read and not acknowledged (a
    table lock holds every write back meanwhile); returns the request ids in those entries."""
    lock = TableLock(ledger.db)
    try:
        lock.acquire()
        wait_until(
            lambda: ledger.pending_on(victim.consumer) > 0,
            what=f"{victim.name} to hold entries",
            timeout=30,
        )
        stack.kill(victim, "KILL")
        # read now: entries are trimmed from the stream once acknowledged by whoever claims them
        held = ledger.request_ids_of(ledger.pending_ids(victim.consumer))
    finally:
        lock.close()
    assert held, f"{victim.name} held no entries when it was killed"
    return held


# (what it is called in the report, what it does), run in turn under one load
Step = tuple[str, Callable[[], object]]
Timing = tuple[str, float, float]


def under_load(
    name: str,
    replicas: Replicas,
    ledger: Ledger,
    steps: Sequence[Step],
    versions: tuple[str, ...] = ("1",),
) -> tuple[LoadResults, list[Timing]]:
    """Runs `steps` one after the other under a load through the gateway, with TAIL_SECONDS of
    load before the first and after each; then holds the load to the promise (finish: no
    failure excused). Returns the results and when each step began and ended."""
    # the load's name prefixes its request ids, which allow no spaces or slashes
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:32]
    load = Load(
        GATEWAY_URL, LoadPlan(rate=RATE, duration=LONG_LOAD_SECONDS), name=slug, versions=versions
    )
    timings: list[Timing] = []
    with load, BacklogSampler(ledger.backlog, load.now) as sampler:
        load.sleep_until(TAIL_SECONDS)
        for label, step in steps:
            began = load.now()
            step()
            timings.append((label, began, load.now()))
            load.sleep_until(load.now() + TAIL_SECONDS)
        load.stop()
        window = Window(timings[0][1], timings[-1][2])
        try:
            results = finish(name, load, sampler, window, ledger)
        finally:
            print("  the gateway's replica events since it started:")
            for line in replicas.gateway_events():
                print(f"    {line}")
    for label, began, ended in timings:
        print(
            f"  {label}: {ended - began:.1f} s, {results.served_between(began, ended)} requests"
            " answered 200 meanwhile"
        )
    return results, timings


def answered_versions(results: LoadResults, start: float, end: float) -> set[str | None]:
    """The model versions that answered the 200s of requests sent within [start, end]."""
    return {r.version for r in results.ok if start <= r.started and r.finished <= end}


def test_api_replica_and_worker_sigkilled_under_load(replicas: Replicas, ledger: Ledger) -> None:
    stack = replicas.stack
    settle(replicas, ledger)
    [api_victim] = stack.running("api-2")
    workers = stack.running("worker")
    worker_victim = workers[-1]
    wait_until(
        lambda: {worker.consumer for worker in workers} <= ledger.consumers(),
        what="every worker to join the consumer group",
        timeout=60,
    )
    served_before = replicas.requests_served()

    load = Load(GATEWAY_URL, LoadPlan(rate=RATE, duration=60), name="replicas-kill")
    with load, BacklogSampler(ledger.backlog, load.now) as sampler:
        load.sleep_until(FAULT_AT)
        start = load.now()
        stack.kill(api_victim, "KILL")
        killed = load.now()
        print(f"\n  killed {api_victim.name} at {start:.1f} s")
        orphaned = kill_holding_entries(stack, ledger, worker_victim)
        print(f"  killed {worker_victim.name} holding {len(orphaned)} unacknowledged requests")
        taken = seconds_until(lambda: not ledger.pending_ids(worker_victim.consumer), timeout=120)
        print(f"  the other workers had claimed its entries {taken:.1f} s after the kill")
        restarted = load.now()
        # started again, and waited for until healthy (the gateway may call a replica that is
        # back under its name UP before it listens: a refused connection is retried elsewhere)
        replicas.compose(
            "up", "--detach", "--no-deps", "--no-recreate", "--wait",
            "--scale", f"worker={WORKERS}", "api-2", "worker",
        )  # fmt: skip
        wait_until(replicas.all_serving, what="api-2 back in the gateway", timeout=60)
        end = load.now()
        print(f"  {api_victim.name} started again, serving {end - restarted:.1f} s later")
        results = finish(
            "3 API replicas + 3 workers behind the gateway, one of each SIGKILLed",
            load,
            sampler,
            Window(start, end),
            ledger,
            # only what the dead replica had in hand when it died: the gateway answers 502, or
            # closes the connection, as the replica did
            excused={"HTTP 502", *TRANSPORT_ERRORS},
            excused_during=Window(start, killed),
            api_killed=True,
        )

    failed = {r.request_id for r in results.results if not r.ok}
    stored_failed = {row.request_id for row in stored_rows(ledger.db, results.prefix)} & failed
    served = replicas.requests_served()
    print(
        f"  {len(failed)} request(s) in the dead replica's hands failed, {len(stored_failed)} of"
        " them stored (once); requests per replica during the run: "
        + ", ".join(f"{name} {served[name] - served_before.get(name, 0)}" for name in SERVERS)
    )
    assert orphaned <= {r.request_id for r in results.ok}, orphaned
    # every replica served, the killed one too once it was back
    assert all(served[name] > served_before.get(name, 0) for name in SERVERS), served
    assert results.served_between(end, results.elapsed) > 0


def test_model_switched_and_back_by_rolling_restarts(
    replicas: Replicas, ledger: Ledger, tmp_path: Path
) -> None:
    settle(replicas, ledger)
    releaser = Releaser(replicas.stack.project, tmp_path)
    replicas.compose(
        "run", "--rm", "--no-deps", "seed-model", "python", "-c", TRAIN_IRIS_2, timeout=300
    )
    try:
        results, timings = under_load(
            "model iris/2 rolled out, then back to iris/1, 3 replicas",
            replicas,
            ledger,
            [
                ("make rollout (serves iris/2)", lambda: releaser.make("rollout")),
                (
                    "make rollout with MODEL_VERSIONS=iris=1",
                    lambda: releaser.make("rollout", env={"MODEL_VERSIONS": "iris=1"}),
                ),
            ],
            versions=("1", "2"),
        )
    finally:
        replicas.compose("run", "--rm", "--no-deps", "seed-model", "rm", "-rf", "/models/iris/2")

    [(_, start, switched), (_, back_from, end)] = timings
    print(f"  answers from iris/2: {sum(r.version == '2' for r in results.ok)}")
    assert answered_versions(results, 0, start) == {"1"}
    assert answered_versions(results, switched, back_from) == {"2"}
    assert answered_versions(results, end, results.elapsed) == {"1"}


def test_release_deployed_and_rolled_back_under_load(
    replicas: Replicas, ledger: Ledger, registry: str, tmp_path: Path
) -> None:
    settle(replicas, ledger)
    releaser = Releaser(replicas.stack.project, tmp_path, registry)
    for version in VERSIONS:
        seconds = releaser.make("release", f"VERSION={version}")
        print(f"  make release VERSION={version}: {seconds:.1f} s")
    # Deploys pull what they run: of the releases, this engine keeps only the layers.
    untag(registry)

    def step(target: str, *variables: str, expected: str) -> Step:
        def run() -> None:
            releaser.make(target, *variables)
            running = replicas.image_versions()
            assert running == {service: {expected} for service in running}, running

        return (f"make {' '.join((target, *variables))}", run)

    under_load(
        "releases 1.0.0 and 1.1.0 deployed and rolled back, 3 replicas",
        replicas,
        ledger,
        [
            step("deploy", "VERSION=1.0.0", expected="1.0.0"),
            step("deploy", "VERSION=1.1.0", expected="1.1.0"),
            step("rollback", expected="1.0.0"),
        ],
    )
    assert releaser.versions() == ["local", "1.0.0"]
