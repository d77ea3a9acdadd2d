"""The API image's GPU variant, checked without building it (it needs NVIDIA's CUDA image, which
only the release workflow reaches): the Dockerfile's two paths and the GPU requirements; and its
packager stage, the same image plus the ONNX converters, which the serving image does not get.

The default path is built and run by every `make test` (the stack under test), which proves that
the default build arguments still make the image it always made.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "services" / "api" / "Dockerfile"
REQUIREMENTS = ROOT / "requirements"
PIN = re.compile(r"([A-Za-z0-9_.-]+)==(\S+)")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments left out."""
    joined: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            # as Docker reads it: the backslash and the line break go, the lines are one
            pending += line.rstrip()[:-1]
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in joined]


def pins(name: str) -> dict[str, str]:
    found = {}
    for line in (REQUIREMENTS / name).read_text().splitlines():
        if match := PIN.fullmatch(line.strip()):
            found[match.group(1).lower()] = match.group(2)
    return found


def test_gpu_requirements_pin_the_same_onnxruntime_release() -> None:
    cpu = pins("api.txt")
    gpu = pins("api-gpu.txt")
    assert "onnxruntime" in cpu
    assert gpu == {"onnxruntime-gpu": cpu["onnxruntime"]}, (
        f"requirements/api-gpu.txt must pin onnxruntime-gpu=={cpu['onnxruntime']},"
        " the onnxruntime of api.txt"
    )


def test_the_gpu_path_swaps_onnxruntime_and_nothing_else() -> None:
    """The GPU branch deletes api.txt's onnxruntime pin with sed and installs api-gpu.txt too."""
    [command] = [args for kind, args in instructions() if kind == "RUN" and "api-gpu.txt" in args]
    [expression] = re.findall(r"sed '/(.+?)/d' /build/requirements/api\.txt", command)
    api = (REQUIREMENTS / "api.txt").read_text().splitlines()
    kept = [line for line in api if not re.search(expression, line)]
    assert len(api) - len(kept) == 1, "exactly one line, the onnxruntime pin, is left out"
    assert [line for line in api if line not in kept] == [
        f"onnxruntime=={pins('api.txt')['onnxruntime']}"
    ]
    assert "-r /build/requirements/api-gpu.txt" in command
    # the default path installs api.txt as it is
    assert "pip install --no-cache-dir -r /build/requirements/api.txt;" in command


def test_the_base_image_is_an_argument_with_the_default_base() -> None:
    steps = instructions()
    assert steps[0] == ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm"), "declared before any FROM"
    froms = [args for kind, args in steps if kind == "FROM"]
    assert froms == [
        "${BASE_IMAGE} AS base",
        "base AS builder",
        "base AS runtime",
        "runtime AS packager",
        "runtime",
    ]
    # every stage that reads GPU declares it, defaulting to the CPU build
    stage: list[str] = []
    for kind, args in [*steps, ("FROM", "")]:
        if kind == "FROM":
            if any("$GPU" in line for line in stage):
                assert "GPU=false" in stage, stage
            stage = []
        elif kind in ("ARG", "RUN"):
            stage.append(args)


def stages() -> dict[str, list[tuple[str, str]]]:
    """Each stage's instructions after its FROM, by name ('' for the unnamed last stage)."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for kind, args in instructions():
        if kind == "FROM":
            words = args.split()
            current = found.setdefault(words[2] if len(words) == 3 else "", [])
        else:
            current.append((kind, args))
    return found


def test_the_converters_are_in_the_packager_stage_and_not_the_api_image() -> None:
    """skl2onnx and onnx are imported only while packaging: requirements/packaging.txt, which the
    packager stage installs on top of the runtime stage; the last stage, the image an untargeted
    build makes, is the runtime stage with nothing installed."""
    api, packaging = pins("api.txt"), pins("packaging.txt")
    assert {"skl2onnx", "onnx"} <= set(packaging)
    assert not set(packaging) & (set(api) | set(pins("worker.txt"))), "each pin in one file"
    assert "-r api.txt" in (REQUIREMENTS / "packaging.txt").read_text().splitlines()
    assert "-r packaging.txt" in (REQUIREMENTS / "dev.txt").read_text().splitlines()

    by_stage = stages()
    assert [kind for kind, _ in by_stage[""]] == ["ARG", "ENV"], "the api image adds no files"
    assert not any("packaging" in args for kind, args in by_stage["builder"])
    [install] = [args for kind, args in by_stage["packager"] if kind == "RUN"]
    # its own pins only: a GPU build must not get api.txt's onnxruntime beside onnxruntime-gpu
    assert "sed '/^-r /d' /build/requirements/packaging.txt" in install
    assert "--no-deps" in install
    assert "pip check" in install
    # installed as root into /opt/venv, then run as berth like the api
    kinds = [(kind, args) for kind, args in by_stage["packager"] if kind in ("USER", "RUN")]
    assert kinds[0] == ("USER", "root")
    assert kinds[-1] == ("USER", "berth:berth")


def test_the_release_workflow_builds_the_gpu_variant_on_a_cuda_image() -> None:
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "release.yml").read_text())
    [gpu] = [e for e in workflow["jobs"]["images"]["strategy"]["matrix"]["include"] if e["suffix"]]
    arguments = dict(line.split("=", 1) for line in gpu["build-args"].splitlines())
    assert arguments["GPU"] == "true"
    assert re.fullmatch(
        r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu22\.04", arguments["BASE_IMAGE"]
    )
    # the Dockerfile's own example names the same image
    assert arguments["BASE_IMAGE"] in DOCKERFILE.read_text()


def shellcheck() -> str | None:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    return found or shutil.which("shellcheck")


def test_every_run_step_is_sound_shell(tmp_path: Path) -> None:
    """Every RUN, both branches of its `if [ "$GPU" = true ]`, parses as POSIX sh, and shellcheck
    finds nothing in it."""
    binary = shellcheck()
    assert binary, "shellcheck is not installed: pip install -r requirements/dev.txt"
    for number, (kind, command) in enumerate(instructions()):
        if kind != "RUN" or command.startswith("["):
            continue
        script = tmp_path / f"run-{number}.sh"
        # build arguments reach RUN as environment variables
        script.write_text(f"#!/bin/sh\nexport GPU=false\n{command}\n")
        parsed = subprocess.run(
            ["sh", "-n", str(script)], capture_output=True, text=True, check=False
        )
        assert parsed.returncode == 0, parsed.stderr
        checked = subprocess.run(
            [binary, "--shell=sh", "--severity=warning", str(script)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout
