"""scripts/release.py (make release, deploy, rollback, rollout) without Docker: versions and their
tags, the history and the env file it writes; and the replicas layout as compose resolves it.

The commands themselves run against a real registry and the faults project in
tests/e2e/faults/test_replicas.py (make test-faults).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts.release import (
    LOCAL,
    Deployment,
    History,
    ReleaseError,
    Version,
    fallback_of,
    registry_of,
    server_of,
    update_env_file,
    with_packager,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "tags"),
    [
        ("1.4.2", ["1.4.2", "1.4", "sha-abc1234"]),
        ("0.1.0", ["0.1.0", "0.1", "sha-abc1234"]),
        ("10.20.30", ["10.20.30", "10.20", "sha-abc1234"]),
        # a pre-release gets no MAJOR.MINOR tag: 1.3 stays the last release
        ("1.3.0-rc.1", ["1.3.0-rc.1", "sha-abc1234"]),
        ("2.0.0-alpha-2.x", ["2.0.0-alpha-2.x", "sha-abc1234"]),
    ],
)
def test_versions_and_their_tags(text: str, tags: list[str]) -> None:
    version = Version.parse(text)
    assert str(version) == text
    assert version.tags("abc1234") == tags


@pytest.mark.parametrize(
    "text",
    [
        "v1.2.3",
        "1.2",
        "1.2.3.4",
        "01.2.3",
        "1.02.3",
        "1.2.3-",
        "1.2.3-01",
        "1.2.3+build.5",
        "",
        "latest",
        "1.2.3 ",
    ],
)
def test_versions_that_are_refused(text: str) -> None:
    with pytest.raises(ReleaseError, match=r"is not MAJOR\.MINOR\.PATCH"):
        Version.parse(text)


def test_registries() -> None:
    assert registry_of("localhost:5000") == "localhost:5000"
    assert registry_of("registry.example.com/ml/berth") == "registry.example.com/ml/berth"
    for bad in ("http://localhost:5000", "localhost:5000/", "local host", ""):
        with pytest.raises(ReleaseError):
            registry_of(bad)


def test_history_keeps_deployments_in_order(tmp_path: Path) -> None:
    history = History(tmp_path / ".deploy-history")
    assert history.entries() == []
    assert history.current().is_local
    first = Deployment.of("1.0.0", "localhost:5000")
    second = Deployment.of("1.1.0", "localhost:5000")
    history.write([Deployment.local(), first, second])
    assert [entry.version for entry in history.entries()] == [LOCAL, "1.0.0", "1.1.0"]
    assert history.current() == second
    assert second.api_image == "localhost:5000/berth-api:1.1.0"
    assert second.worker_image == "localhost:5000/berth-worker:1.1.0"
    assert second.packager_image == "localhost:5000/berth-packager:1.1.0"
    assert Deployment.local().images == (
        "berth-api:latest",
        "berth-worker:latest",
        "berth-packager:latest",
    )
    text = history.path.read_text()
    assert text.startswith("#"), "the file says what it is"
    history.path.write_text(text + "broken line\n")
    with pytest.raises(ReleaseError, match="expected 5 fields"):
        history.entries()


def test_history_written_before_the_packager_image_packages_with_the_api_image(
    tmp_path: Path,
) -> None:
    """A release made before the packager image carried the converters in its api image: going
    back to it runs that image for make train and make package too."""
    history = History(tmp_path / ".deploy-history")
    history.path.write_text(
        "# Berth deployments, oldest first: <UTC time> <version> <api image> <worker image>.\n"
        "2026-11-01T10:00:00Z local berth-api:latest berth-worker:latest\n"
        "2026-11-02T10:00:00Z 1.0.0 localhost:5000/berth-api:1.0.0"
        " localhost:5000/berth-worker:1.0.0\n"
    )
    old = history.current()
    assert old.packager_image == old.api_image == "localhost:5000/berth-api:1.0.0"
    assert old.settings()["BERTH_PACKAGER_IMAGE"] == "localhost:5000/berth-api:1.0.0"
    # an env file such a deploy wrote names the api image alone: seed-model runs that one too
    services = resolved("docker-compose.yml", env={"BERTH_API_IMAGE": old.api_image})["services"]
    assert services["seed-model"]["image"] == old.api_image
    history.write([*history.entries(), Deployment.of("1.1.0", "localhost:5000")])
    assert [len(line.split()) for line in history.path.read_text().splitlines()[2:]] == [5, 5, 5]


def test_a_release_without_a_packager_image_packages_with_its_api_image() -> None:
    pulled: list[str] = []

    def registry_without_packager(image: str) -> None:
        pulled.append(image)
        if "berth-packager" in image:
            raise ReleaseError(f"`docker pull {image}` exited 1: manifest unknown")

    def registry_with_everything(image: str) -> None:
        pulled.append(image)

    target = Deployment.of("1.0.0", "localhost:5000")
    old = with_packager(target, registry_without_packager)
    assert old.packager_image == old.api_image == "localhost:5000/berth-api:1.0.0"
    assert old.settings()["BERTH_PACKAGER_IMAGE"] == old.api_image
    assert with_packager(target, registry_with_everything) == target
    assert pulled == ["localhost:5000/berth-packager:1.0.0"] * 2
    # the local builds are never pulled
    local = Deployment.local()
    assert with_packager(local, registry_without_packager) is local
    assert len(pulled) == 2


def test_env_file_gets_the_images_and_loses_them_again(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("POSTGRES_PASSWORD=secret\n# BERTH_API_IMAGE=\nAPI_PORT=8000\n")
    env_file.chmod(0o600)
    deployed = Deployment.of("1.1.0", "localhost:5000")
    update_env_file(env_file, deployed.settings())
    assert env_file.read_text().splitlines() == [
        "POSTGRES_PASSWORD=secret",
        "BERTH_API_IMAGE=localhost:5000/berth-api:1.1.0",
        "API_PORT=8000",
        "BERTH_WORKER_IMAGE=localhost:5000/berth-worker:1.1.0",
        "BERTH_PACKAGER_IMAGE=localhost:5000/berth-packager:1.1.0",
        "BERTH_PULL_POLICY=missing",
    ]
    # back to the local builds: the settings go, the rest stays, secrets stay private
    update_env_file(env_file, Deployment.local().settings())
    assert env_file.read_text().splitlines() == ["POSTGRES_PASSWORD=secret", "API_PORT=8000"]
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert Deployment.local().environment()["BERTH_PULL_POLICY"] == "never"


def test_gateway_names_of_the_api_services() -> None:
    assert [server_of(s) for s in ("api", "api-2", "api-3")] == ["api-1", "api-2", "api-3"]
    config = (ROOT / "deploy" / "gateway" / "haproxy.cfg").read_text()
    lines = [line.split() for line in config.splitlines() if line.strip().startswith("server ")]
    replicas = [words[1] for words in lines if "backup" not in words]
    assert replicas == ["api-1", "api-2", "api-3"]
    # each replica's fallback: the same address (allowed twice), unchecked, used only when no
    # replica's own entry is up
    fallbacks = {words[1]: words[2] for words in lines if "backup" in words}
    assert fallbacks == {fallback_of(name): f"{name}:8000" for name in replicas}
    for words in lines:
        assert ("check" in words) == ("backup" not in words)
        assert ("allow-dup-ip" in words) == ("backup" in words)


def test_release_refuses_a_bad_version_before_building(capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.release import main

    assert main(["release", "v1.2.3"]) == 1
    assert "without the v" in capsys.readouterr().err


# ---- the replicas layout, as compose resolves it ------------------------------------------------


def compose_binary() -> str:
    found = shutil.which("docker-compose", path=str(Path(sys.executable).parent))
    found = found or shutil.which("docker-compose")
    assert found, "docker-compose is not installed: pip install -r requirements/dev.txt"
    return found


def resolved(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [compose_binary(), "--project-directory", str(ROOT)]
    for name in files:
        command += ["--file", str(ROOT / name)]
    result = subprocess.run(
        [*command, "config", "--format", "json"],
        env={
            "PATH": "/usr/bin:/bin",
            "POSTGRES_PASSWORD": "p",
            "REDIS_PASSWORD": "r",
            **(env or {}),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    model: dict[str, Any] = json.loads(result.stdout)
    return model


def test_replicas_layout_has_one_entry_point_and_a_spool_per_replica() -> None:
    model = resolved("docker-compose.yml", "docker-compose.replicas.yml")
    services = model["services"]
    apis = [name for name in services if name == "api" or name.startswith("api-")]
    assert apis == ["api", "api-2", "api-3"]
    published = {
        name: service["ports"] for name, service in services.items() if service.get("ports")
    }
    assert list(published) == ["gateway"], published
    assert published["gateway"][0]["target"] == 8000
    assert published["gateway"][0]["host_ip"] == "127.0.0.1"
    spools = {}
    for name in apis:
        mounts = {m["target"]: m["source"] for m in services[name]["volumes"]}
        spools[name] = mounts["/spool"]
        assert services[name]["image"] == services["api"]["image"]
        assert services[name]["environment"] == services["api"]["environment"]
    assert len(set(spools.values())) == len(apis), spools
    assert set(spools.values()) <= set(model["volumes"])
    # one image built once: only api builds it
    assert [name for name in apis if "build" in services[name]] == ["api"]
    # the gateway finds api by api-1, the others by their names; `api` answers for all three
    assert services["api"]["networks"]["default"]["aliases"] == ["api-1"]
    assert services["api-2"]["networks"]["default"]["aliases"] == ["api"]
    assert services["worker"]["scale"] == 3
    # the configuration is baked into the image: nothing is mounted from the host
    assert not services["gateway"].get("volumes")


def test_images_follow_the_deployed_release() -> None:
    local = resolved("docker-compose.yml")["services"]
    assert (local["api"]["image"], local["api"]["pull_policy"]) == ("berth-api:latest", "never")
    assert local["migrate"]["image"] == local["worker"]["image"] == "berth-worker:latest"
    # packaging runs the api's Dockerfile's packager stage: the api image plus the converters
    assert (local["seed-model"]["image"], local["seed-model"]["pull_policy"]) == (
        "berth-packager:latest",
        "never",
    )
    packager, api = local["seed-model"]["build"], local["api"]["build"]
    assert packager["target"] == "packager"
    assert "target" not in api, "the api image is the Dockerfile's last stage"
    assert (packager["dockerfile"], packager["args"]) == (api["dockerfile"], api["args"])
    # every image is built by one service; the other services run it
    built = [name for name, service in local.items() if "build" in service]
    images = [local[name]["image"] for name in built]
    assert sorted(images) == sorted({*Deployment.local().images}), built
    deployed = Deployment.of("1.1.0", "localhost:5000")
    services = resolved("docker-compose.yml", env=deployed.environment())["services"]
    for name, image in (
        ("api", deployed.api_image),
        ("seed-model", deployed.packager_image),
        ("worker", deployed.worker_image),
        ("migrate", deployed.worker_image),
    ):
        assert services[name]["image"] == image
        assert services[name]["pull_policy"] == "missing"
