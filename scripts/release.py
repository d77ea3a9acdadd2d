"""Release Berth's images and switch a compose stack between them: what `make release`, `make
deploy`, `make rollback` and `make rollout` run.

  release VERSION  build berth-api, berth-packager and berth-worker from this checkout, tag
                   each VERSION, MAJOR.MINOR (not for a pre-release) and sha-<commit>, push
                   every tag
  deploy VERSION   pull REGISTRY/berth-{api,packager,worker}:VERSION, migrate with the new
                   worker image, replace the workers, then the API containers one at a time;
                   record it
  rollback         back to the version deployed before the current one (no migration runs)
  rollout          replace the API containers one at a time, images unchanged: new bundles and
                   changed settings (MODEL_VERSIONS, ...) are served without dropping requests

The deployed images are written to the env file (BERTH_API_IMAGE, BERTH_PACKAGER_IMAGE,
BERTH_WORKER_IMAGE, BERTH_PULL_POLICY), so that every later `docker compose` or `make` command
runs them (the packager, seed-model's, for make train and make package), and each deployment is a
line of the history file (oldest first), which `rollback` pops. The first deploy records what ran
before it as version `local` (the images `make build` makes): rolling back to it removes those
settings again.

With the replicas layout (docker-compose.replicas.yml, whose gateway is the entry point) a replica
is drained in the gateway before it is replaced and made ready once the new container passes
/readyz, so no request fails. With the single API container, the API is unreachable while it
restarts (the restart window, printed).

Standard library only: it runs with the host's python3, and docker and docker compose on PATH.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import io
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True)
class ImageBuild:
    dockerfile: str
    target: str | None = None


# In this order: with the legacy builder (no BuildKit), the api's build also builds the packager
# stage, so the packager's own build after it is all cache.
IMAGES = {
    "api": ImageBuild("services/api/Dockerfile"),
    "packager": ImageBuild("services/api/Dockerfile", target="packager"),
    "worker": ImageBuild("services/worker/Dockerfile"),
}
LOCAL = "local"
# api, worker, packager: the order of a history line's images.
LOCAL_IMAGES = ("berth-api:latest", "berth-worker:latest", "berth-packager:latest")
IMAGE_SETTINGS = (
    "BERTH_API_IMAGE",
    "BERTH_WORKER_IMAGE",
    "BERTH_PACKAGER_IMAGE",
    "BERTH_PULL_POLICY",
)
# semver.org's own expression, less build metadata: `+` cannot be part of an image tag.
SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
)
# host[:port] with an optional path (registry.example.com/ml), as `docker push` takes it.
REGISTRY = re.compile(r"[a-zA-Z0-9.-]+(?::\d+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*")
# API services of the replicas layout: api, api-2, api-3, ...; their servers in the gateway.
API_SERVICE = re.compile(r"api(?:-(\d+))?")
GATEWAY = "gateway"
GATEWAY_BACKEND = "replicas"
ADMIN_SOCKET = "/run/haproxy/admin.sock"
DRAIN_TIMEOUT_SECONDS = 40.0
READY_TIMEOUT_SECONDS = 240.0


class ReleaseError(Exception):
    """A refusal or a failed step, said in one line to the person who ran the command."""


# ---- versions and history --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Version:
    major: int
    minor: int
    patch: int
    prerelease: str | None = None

    @classmethod
    def parse(cls, text: str) -> Version:
        match = SEMVER.fullmatch(text)
        if match is None:
            hint = " (without the v)" if text.startswith("v") else ""
            raise ReleaseError(
                f"version {text!r} is not MAJOR.MINOR.PATCH[-PRERELEASE]{hint}, e.g. 1.4.2"
            )
        major, minor, patch, prerelease = match.groups()
        return cls(int(major), int(minor), int(patch), prerelease)

    def __str__(self) -> str:
        core = f"{self.major}.{self.minor}.{self.patch}"
        return f"{core}-{self.prerelease}" if self.prerelease else core

    def tags(self, sha: str) -> list[str]:
        """What the release workflow tags too: 1.4.2, 1.4 (not for a pre-release), sha-<commit>."""
        tags = [str(self)]
        if self.prerelease is None:
            tags.append(f"{self.major}.{self.minor}")
        tags.append(f"sha-{sha}")
        return tags


def registry_of(text: str) -> str:
    if REGISTRY.fullmatch(text) is None:
        raise ReleaseError(f"registry {text!r} is not HOST[:PORT][/PATH], e.g. localhost:5000")
    return text


@dataclass(frozen=True, slots=True)
class Deployment:
    """One line of the history: when, which version, which images."""

    at: str
    version: str
    api_image: str
    worker_image: str
    packager_image: str

    @classmethod
    def of(cls, version: str, registry: str) -> Deployment:
        return cls(
            now(),
            version,
            f"{registry}/berth-api:{version}",
            f"{registry}/berth-worker:{version}",
            f"{registry}/berth-packager:{version}",
        )

    @classmethod
    def local(cls) -> Deployment:
        return cls(now(), LOCAL, *LOCAL_IMAGES)

    @property
    def is_local(self) -> bool:
        return self.version == LOCAL

    @property
    def images(self) -> tuple[str, str, str]:
        return (self.api_image, self.worker_image, self.packager_image)

    def line(self) -> str:
        return f"{self.at} {self.version} {' '.join(self.images)}"

    def settings(self) -> dict[str, str | None]:
        """The env file's image settings for it; none at all for the local builds."""
        if self.is_local:
            return dict.fromkeys(IMAGE_SETTINGS)
        return {
            "BERTH_API_IMAGE": self.api_image,
            "BERTH_WORKER_IMAGE": self.worker_image,
            "BERTH_PACKAGER_IMAGE": self.packager_image,
            "BERTH_PULL_POLICY": "missing",
        }

    def environment(self) -> dict[str, str]:
        """The same, for compose's environment, which wins over the env file."""
        return {
            "BERTH_API_IMAGE": self.api_image,
            "BERTH_WORKER_IMAGE": self.worker_image,
            "BERTH_PACKAGER_IMAGE": self.packager_image,
            "BERTH_PULL_POLICY": "never" if self.is_local else "missing",
        }


HISTORY_HEADER = (
    "# Berth deployments, oldest first: <UTC time> <version> <api image> <worker image>"
    " <packager image>.\n"
    "# Written by make deploy; make rollback removes the last line and runs the one before.\n"
)


class History:
    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[Deployment]:
        if not self.path.exists():
            return []
        entries = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split()
            if len(fields) == 4:
                # Deployed before there was a packager image: that release's api image packaged.
                fields.append(fields[2])
            if len(fields) != 5:
                raise ReleaseError(f"{self.path}:{number}: expected 5 fields, got {line!r}")
            entries.append(Deployment(*fields))
        return entries

    def current(self) -> Deployment:
        entries = self.entries()
        return entries[-1] if entries else Deployment.local()

    def write(self, entries: Sequence[Deployment]) -> None:
        text = HISTORY_HEADER + "".join(f"{entry.line()}\n" for entry in entries)
        replace_file(self.path, text)


def update_env_file(path: Path, settings: Mapping[str, str | None]) -> None:
    """Sets (or, for None, removes) KEY=VALUE lines of an env file, keeping every other line.

    A key is set where its line, or its commented-out `# KEY=` line, is; appended otherwise.
    """
    lines = path.read_text().splitlines() if path.exists() else []
    pending = dict(settings)
    out: list[str] = []
    for line in lines:
        match = re.match(r"(?:# ?)?([A-Z_][A-Z0-9_]*)=", line)
        key = match.group(1) if match else None
        if key in pending:
            value = pending.pop(key)
            if value is not None:
                out.append(f"{key}={value}")
            elif line.startswith("#"):
                out.append(line)
            continue
        out.append(line)
    out.extend(f"{key}={value}" for key, value in pending.items() if value is not None)
    replace_file(path, "\n".join(out) + "\n")


def replace_file(path: Path, text: str) -> None:
    """Writes through a temporary file and a rename, keeping the file's mode (600 for .env)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.write_text(text)
    os.chmod(temporary, mode)
    os.replace(temporary, path)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- docker and compose ----------------------------------------------------------------------


def run(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input_text: str | None = None,
    capture: bool = False,
) -> str:
    """Runs a command from the repository root; its output goes to ours unless captured."""
    result = subprocess.run(  # noqa: S603 - docker and compose, with arguments built here
        list(command),
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        input=input_text,
        text=True,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        check=False,
    )
    if result.returncode != 0:
        detail = f": {(result.stderr or result.stdout or '').strip()}" if capture else ""
        raise ReleaseError(f"`{shlex.join(command)}` exited {result.returncode}{detail}")
    return result.stdout or ""


class Stack:
    """The compose project that `COMPOSE` (and COMPOSE_FILE, COMPOSE_PROJECT_NAME) points at."""

    def __init__(self, compose: Sequence[str], env_file: Path) -> None:
        self.compose = [*compose, "--env-file", str(env_file)]

    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> str:
        return run([*self.compose, *args], env=env)

    def output(self, *args: str, input_text: str | None = None) -> str:
        return run([*self.compose, *args], input_text=input_text, capture=True)

    def services(self) -> list[str]:
        return self.output("config", "--services").split()

    def api_services(self) -> list[str]:
        """api, api-2, api-3, ...: in that order."""
        ordinals = {}
        for service in self.services():
            if match := API_SERVICE.fullmatch(service):
                ordinals[service] = int(match.group(1) or 1)
        return sorted(ordinals, key=ordinals.__getitem__)

    def addresses(self, service: str) -> set[str]:
        """The IP addresses of the service's running containers."""
        ids = self.output("ps", "--status", "running", "--quiet", service).split()
        if not ids:
            return set()
        template = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
        return set(run(["docker", "inspect", "--format", template, *ids], capture=True).split())

    def wait_ready(self, service: str, timeout: float) -> float:
        """Waits for the service's container to answer /readyz with 200 (its own health check,
        run every half second rather than Docker's every 5); returns the seconds it took."""
        started = time.monotonic()
        while True:
            try:
                self.output("exec", "-T", service, "python", "-m", "berth_api.healthcheck")
                return time.monotonic() - started
            except ReleaseError as exc:
                if time.monotonic() - started > timeout:
                    raise ReleaseError(
                        f"{service}: not ready after {timeout:g} s ({exc})"
                    ) from None
            time.sleep(0.5)

    def running(self, service: str) -> int:
        return len(self.output("ps", "--status", "running", "--quiet", service).split())

    def project(self) -> str:
        text = self.output("config", "--format", "json")
        match = re.search(r'"name":\s*"([^"]+)"', text)
        if match is None:
            raise ReleaseError("cannot tell the compose project's name")
        return match.group(1)


class Gateway:
    """HAProxy's runtime API in the gateway container, through `docker compose exec`."""

    def __init__(self, stack: Stack) -> None:
        self._stack = stack

    def admin(self, command: str) -> str:
        return self._stack.output(
            "exec", "-T", GATEWAY, "socat", "stdio", f"UNIX-CONNECT:{ADMIN_SOCKET}",
            input_text=f"{command}\n",
        )  # fmt: skip

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers by name: `show stat` rows (status, scur, addr, ...)."""
        text = self.admin("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row.get("pxname") == GATEWAY_BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def set_state(self, entries: set[str], state: str) -> None:
        """Sets the state of a replica's entries (entries_of): with its unchecked fallback's
        too, a drained replica gets no request even while every other one fails its checks."""
        for name in sorted(entries):
            answer = self.admin(f"set server {GATEWAY_BACKEND}/{name} state {state}").strip()
            if answer:
                raise ReleaseError(f"gateway refused `set server {name} state {state}`: {answer}")

    def entries_of(self, server: str) -> set[str]:
        """The replica's entries in the gateway: its own, and its fallback if there is one (a
        gateway from before the fallbacks has none; deploy/gateway/haproxy.cfg)."""
        servers = self.servers()
        return {name for name in (server, fallback_of(server)) if name in servers}

    def wait(
        self, server: str, what: str, done: Callable[[dict[str, str]], bool], timeout: float
    ) -> float:
        return self.wait_all({server}, what, done, timeout)

    def wait_all(
        self, servers: set[str], what: str, done: Callable[[dict[str, str]], bool], timeout: float
    ) -> float:
        """Waits until `done` holds for every one of `servers` at once."""
        started = time.monotonic()
        while True:
            rows = self.servers()
            missing = servers - set(rows)
            if missing:
                raise ReleaseError(f"the gateway has no server {', '.join(sorted(missing))}")
            waiting = sorted(name for name in servers if not done(rows[name]))
            if not waiting:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                states = ", ".join(
                    f"{name} {rows[name].get('status')} ({rows[name].get('scur')} requests in"
                    " flight)"
                    for name in waiting
                )
                raise ReleaseError(f"not {what} after {timeout:g} s: {states}")
            time.sleep(0.2)


def server_of(service: str) -> str:
    """The gateway's name for an API service: api is api-1."""
    return "api-1" if service == "api" else service


def fallback_of(server: str) -> str:
    """The gateway's unchecked entry for the same replica, used while every replica fails its
    checks."""
    return f"{server}-fallback"


def _pull_image(image: str) -> None:
    run(["docker", "pull", "--quiet", image])


def with_packager(
    target: Deployment, pull_image: Callable[[str], None] = _pull_image
) -> Deployment:
    """The release, with its api image as packager when the registry has no packager image for
    it: a release made before berth-packager existed carried the converters in its api image."""
    if target.is_local or target.packager_image == target.api_image:
        return target
    try:
        pull_image(target.packager_image)
    except ReleaseError as exc:
        print(
            f"deploy: {target.packager_image} could not be pulled ({exc}); make train and make"
            f" package will run {target.api_image}, as releases from before berth-packager did"
        )
        return replace(target, packager_image=target.api_image)
    return target


def pull(deployment: Deployment) -> None:
    """Every image, the packager's too: make train and make package run it after the deploy."""
    for image in deployment.images:
        if deployment.is_local:
            run(["docker", "image", "inspect", image], capture=True)
        else:
            run(["docker", "pull", "--quiet", image])


# ---- the commands ----------------------------------------------------------------------------


def release(version: Version, registry: str, sha: str, *, allow_dirty: bool) -> None:
    """Builds, tags and pushes every image. `sha` (make's GIT_SHA) goes into the images; the tag
    names the whole commit when git can tell it, as the release workflow's tag does."""
    tag_sha = git(["rev-parse", "HEAD"]).strip() or sha
    if not re.fullmatch(r"[0-9a-f]{7,40}", sha) or not re.fullmatch(r"[0-9a-f]{7,40}", tag_sha):
        raise ReleaseError(f"GIT_SHA {sha!r} is not a commit: release from a git checkout")
    if not allow_dirty and (changes := uncommitted_changes()):
        raise ReleaseError(
            f"the checkout has uncommitted changes ({changes}): an image tagged sha-{sha} would"
            " not be that commit; commit them, or ALLOW_DIRTY=1"
        )
    tags = version.tags(tag_sha)
    for name, image in IMAGES.items():
        references = [f"{registry}/berth-{name}:{tag}" for tag in tags]
        started = time.monotonic()
        run(
            [
                "docker", "build", "--quiet", "-f", image.dockerfile,
                *(["--target", image.target] if image.target else []),
                "--build-arg", f"GIT_SHA={sha}",
                "--label", f"org.opencontainers.image.title=berth-{name}",
                "--label", f"org.opencontainers.image.version={version}",
                "--label", f"org.opencontainers.image.revision={sha}",
                *(argument for reference in references for argument in ("-t", reference)),
                ".",
            ]
        )  # fmt: skip
        built = time.monotonic() - started
        for reference in references:
            run(["docker", "push", "--quiet", reference])
        print(
            f"release: berth-{name} built in {built:.1f} s, pushed in"
            f" {time.monotonic() - started - built:.1f} s as {', '.join(tags)} to {registry}"
        )


def git(arguments: Sequence[str]) -> str:
    """git's output in this checkout; '' where there is no git or no checkout (a container)."""
    try:
        return subprocess.run(  # noqa: S603 - git, with arguments built here
            ["git", *arguments],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""


def uncommitted_changes() -> str:
    """Paths git reports as changed or untracked ('' when clean, or when git is not there)."""
    paths = [line[3:] for line in git(["status", "--porcelain"]).splitlines()]
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def switch(stack: Stack, target: Deployment, *, migrate: bool, workers_first: bool) -> None:
    """Runs `target`'s images: the workers together, the API containers one at a time."""
    pull(target)
    env = target.environment()
    if migrate:
        stack("run", "--rm", "--no-deps", "migrate", env=env)

    def workers() -> None:
        count = max(1, stack.running("worker"))
        stack(
            "up", "--detach", "--no-deps", "--wait",
            "--wait-timeout", f"{READY_TIMEOUT_SECONDS:.0f}",
            "--scale", f"worker={count}", "worker", env=env,
        )  # fmt: skip
        print(f"deploy: {count} worker(s) on {target.worker_image}")

    if workers_first:
        workers()
    replace_apis(stack, env)
    if not workers_first:
        workers()


def replace_apis(stack: Stack, env: Mapping[str, str] | None = None) -> None:
    """Each API container recreated in turn: taken out of the gateway, its requests in flight
    finished, recreated, and serving through the gateway again before the next, with the
    replicas layout; recreated with a restart window otherwise."""
    services = stack.api_services()
    if GATEWAY not in stack.services():
        refuse_single_layout_on_replicas(stack)
        started = time.monotonic()
        stack(
            "up", "--detach", "--no-deps", "--force-recreate", "--wait",
            "--wait-timeout", f"{READY_TIMEOUT_SECONDS:.0f}", *services, env=env,
        )  # fmt: skip
        print(
            f"deploy: {', '.join(services)} recreated and healthy in"
            f" {time.monotonic() - started:.1f} s (no replicas: requests in that time may fail)"
        )
        return
    gateway = Gateway(stack)
    for service in services:
        server = server_of(service)
        started = time.monotonic()
        # Never one out while another is: a replica the gateway has just taken out (a failed
        # check on a loaded machine) would otherwise leave fewer serving than the layout promises.
        others = {server_of(other) for other in services} - {server}
        gateway.wait_all(others, "serving", is_up, READY_TIMEOUT_SECONDS)
        entries = gateway.entries_of(server)
        # maint: no new request goes there; those in flight finish (scur counts them).
        gateway.set_state(entries, "maint")
        drained = gateway.wait_all(
            entries, "drained", lambda row: row["scur"] == "0", DRAIN_TIMEOUT_SECONDS
        )
        try:
            stack("up", "--detach", "--no-deps", "--force-recreate", service, env=env)
            # Out of the gateway until it is ready: an UP the gateway kept from the old container
            # (same address, checks not failed yet) would let the next replica go too early.
            ready = stack.wait_ready(service, READY_TIMEOUT_SECONDS)
        finally:
            # Back in service even if that failed: the gateway's health check keeps a replica
            # that does not answer /readyz out of it, and an old one that still runs serves.
            gateway.set_state(entries, "ready")
        serving = partial(serves_again, stack.addresses(service))
        up = gateway.wait(server, "serving", serving, READY_TIMEOUT_SECONDS)
        print(
            f"deploy: {service} drained in {drained:.1f} s, replaced, ready after {ready:.1f} s,"
            f" serving through the gateway {up:.1f} s later"
            f" ({time.monotonic() - started:.1f} s in all)"
        )


def is_up(row: dict[str, str]) -> bool:
    return row["status"].startswith("UP")


def serves_again(addresses: set[str], row: dict[str, str]) -> bool:
    """UP in the gateway at the new container's address (the gateway re-resolves the name)."""
    return is_up(row) and row.get("addr", "").rsplit(":", 1)[0] in addresses


def refuse_single_layout_on_replicas(stack: Stack) -> None:
    """A stack started with the replicas layout, driven without it, would get `api` back on the
    gateway's port: refuse, and say how to name the layout."""
    project = stack.project()
    found = run(
        [
            "docker", "ps", "--quiet",
            "--filter", f"label=com.docker.compose.project={project}",
            "--filter", f"label=com.docker.compose.service={GATEWAY}",
        ],
        capture=True,
    )  # fmt: skip
    if found.strip():
        raise ReleaseError(
            f"project {project} runs a gateway (the replicas layout): set"
            " COMPOSE_FILE=docker-compose.yml:docker-compose.replicas.yml (in .env or the"
            " environment) so that every command uses that layout"
        )


@contextmanager
def locked(history: History) -> Iterator[None]:
    """One deploy, rollback or rollout at a time per history file."""
    lock_path = history.path.with_name(f"{history.path.name}.lock")
    with open(lock_path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ReleaseError(f"another deploy holds {lock_path}") from None
        yield


def deploy(stack: Stack, history: History, env_file: Path, target: Deployment) -> None:
    entries = history.entries() or [Deployment.local()]
    started = time.monotonic()
    target = with_packager(target)
    switch(stack, target, migrate=True, workers_first=True)
    update_env_file(env_file, target.settings())
    history.write([*entries, target])
    print(
        f"deploy: {target.version} runs ({time.monotonic() - started:.1f} s);"
        f" make rollback goes back to {entries[-1].version}"
    )


def rollback(stack: Stack, history: History, env_file: Path) -> None:
    entries = history.entries()
    if len(entries) < 2:
        raise ReleaseError(
            f"nothing to roll back to: {history.path} holds {len(entries)} deployment(s)"
        )
    current, target = entries[-1], entries[-2]
    started = time.monotonic()
    # The newer schema stays: the previous version must work with it (see README, Releasing).
    switch(stack, target, migrate=False, workers_first=False)
    update_env_file(env_file, target.settings())
    history.write(entries[:-1])
    print(f"rollback: {current.version} -> {target.version} ({time.monotonic() - started:.1f} s)")


def rollout(stack: Stack) -> None:
    started = time.monotonic()
    replace_apis(stack)
    print(f"rollout: every API container replaced ({time.monotonic() - started:.1f} s)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--compose", default="docker compose", help="the compose command")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    parser.add_argument("--history", type=Path, default=ROOT / ".deploy-history")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("release", "deploy"):
        command = commands.add_parser(name)
        command.add_argument("version")
        command.add_argument("--registry", default="localhost:5000")
    commands.choices["release"].add_argument("--sha", default=os.environ.get("GIT_SHA", ""))
    commands.choices["release"].add_argument("--allow-dirty", action="store_true")
    commands.add_parser("rollback")
    commands.add_parser("rollout")
    args = parser.parse_args(argv)

    stack = Stack(shlex.split(args.compose), args.env_file)
    history = History(args.history)
    try:
        if args.command == "release":
            release(
                Version.parse(args.version),
                registry_of(args.registry),
                args.sha,
                allow_dirty=args.allow_dirty,
            )
            return 0
        with locked(history):
            if args.command == "deploy":
                version = str(Version.parse(args.version))
                deploy(
                    stack,
                    history,
                    args.env_file,
                    Deployment.of(version, registry_of(args.registry)),
                )
            elif args.command == "rollback":
                rollback(stack, history, args.env_file)
            else:
                rollout(stack)
    except ReleaseError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
