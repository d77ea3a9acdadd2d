"""Fuzzing the live stack's API: no 5xx, nothing that breaks the document, no restart."""

from __future__ import annotations

import http.client
import json
import os
import socket
from typing import Any

import httpx

from tests.e2e.stack import Compose
from tests.fuzz import run_schemathesis

EXAMPLES = int(os.environ.get("BERTH_FUZZ_EXAMPLES", "20"))
DOCKER_SOCKET = "/var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def inspect(container: str) -> dict[str, Any]:
    """The Docker engine's view of a container, straight from its API socket."""
    connection = _UnixConnection(DOCKER_SOCKET)
    connection.request("GET", f"/containers/{container}/json")
    body: dict[str, Any] = json.loads(connection.getresponse().read())
    connection.close()
    return body


def test_fuzzing_the_stack_never_restarts_the_api(
    api_url: str, compose: Compose, api: httpx.Client
) -> None:
    container = compose("ps", "--quiet", "api").stdout.strip()
    before = inspect(container)
    run = run_schemathesis(api_url, examples=EXAMPLES)
    print(f"schemathesis: {run.cases} cases")
    print(run.output[-3000:])
    after = inspect(container)
    assert run.returncode == 0, run.output[-6000:]
    assert run.cases > 100
    assert after["RestartCount"] == before["RestartCount"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert after["State"]["Running"] is True
    assert api.get("/healthz").status_code == 200
