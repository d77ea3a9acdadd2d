"""`.ci/run` is what CI executes on every landing: it must parse, and run both suites."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import ROOT

SCRIPT = ROOT / ".ci" / "run"


def test_the_ci_entry_point_parses() -> None:
    bash = shutil.which("bash")
    assert bash is not None
    result = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_it_runs_the_suite_and_the_fault_tests_after_the_docker_setup() -> None:
    commands = [
        line.strip()
        for line in SCRIPT.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert commands[0] == "set -euo pipefail"
    setup = commands.index("../shared/docker-offline/setup.sh")
    assert commands[setup + 1 :] == ["make test", "make test-faults"]
