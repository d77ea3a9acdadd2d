"""The Helm chart (deploy/helm/berth), checked offline: no helm binary, no cluster, no network.

helm-python-sdk (Helm's own Go SDK in a bundled library) lints the chart and renders it with each
value set of deploy/helm/berth/ci/, validating the values against values.schema.json as an
install would. Every rendered manifest is then validated against the Kubernetes API schemas of
several versions (kubernetes-validate, strict: unknown fields are errors), and KEDA's objects
against KEDA's CRD schemas (vendored in tests/schemas/keda). Berth's own promises are asserted
on what comes out: locked-down pods, the spool on a volume that outlives its pod, the
migration before anything starts, the backlog triggers, the network policy.
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import referencing
import referencing.jsonschema
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "berth"
VALUE_SETS = sorted(
    path.name.removesuffix("-values.yaml") for path in (CHART / "ci").glob("*.yaml")
)
KEDA_SCHEMAS = ROOT / "tests" / "schemas" / "keda"
# The chart's minimum (Chart.yaml kubeVersion), one in between and the newest that
# kubernetes-validate knows.
KUBE_VERSIONS = ("1.32.0", "1.35.0", "1.37.0")
RELEASE, NAMESPACE = "demo", "ml"

Manifest = dict[str, Any]


# ---- rendering -------------------------------------------------------------------------------


def value_set(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return values


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def render(values: dict[str, Any]) -> list[Manifest]:
    """The manifests an install would apply (hooks and the test pod included), in file order."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[Manifest] = []
    for path in sorted(files):
        if path.endswith(".yaml"):
            manifests.extend(doc for doc in yaml.safe_load_all(files[path]) if doc)
    return manifests


@functools.cache
def _rendered(name: str) -> str:
    return json.dumps(render(value_set(name)))


def rendered(name: str) -> list[Manifest]:
    """The manifests of a value set, rendered once per session, a fresh copy per test."""
    manifests: list[Manifest] = json.loads(_rendered(name))
    return manifests


def find(manifests: list[Manifest], kind: str, name: str | None = None) -> list[Manifest]:
    return [
        m
        for m in manifests
        if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)
    ]


def one(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = find(manifests, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec anywhere in a manifest: whatever holds `containers` is one."""
    if isinstance(node, dict):
        if "containers" in node:
            yield where, node
        for key, value in node.items():
            yield from pod_specs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from pod_specs(value, f"{where}[{index}]")


def all_pod_specs(manifests: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{m['kind']}/{m['metadata']['name']}{where}", spec)
        for m in manifests
        for where, spec in pod_specs(m)
    ]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in spec["containers"] if c["name"] == name]
    return found  # type: ignore[no-any-return]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def api_spec(manifests: list[Manifest]) -> dict[str, Any]:
    spec: dict[str, Any] = one(manifests, "StatefulSet")["spec"]["template"]["spec"]
    return spec


# ---- lint and the Kubernetes API schemas ----------------------------------------------------


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_helm_lint_finds_nothing(name: str, kube_version: str) -> None:
    report = helm.lint(CHART, value_set(name), strict=True, kube_version=f"v{kube_version}")
    # severity 1 is information ("icon is recommended"); 2 warning, 3 error
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []
    assert report["errors"] == []


def strict_crd_schema(schema: Any) -> Any:
    """An object that lists its properties admits no others, as the API server's strict field
    validation has it; what a CRD marks x-kubernetes-preserve-unknown-fields stays open."""
    if isinstance(schema, dict):
        schema = {key: strict_crd_schema(value) for key, value in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict_crd_schema(item) for item in schema]
    return schema


@functools.cache
def keda_validator(kind: str, kube_version: str) -> jsonschema.Draft202012Validator:
    """KEDA's CRD schema of `kind`, strict, with metadata checked as Kubernetes' ObjectMeta of
    that version (kubernetes-validate's definitions)."""
    schema = json.loads((KEDA_SCHEMAS / f"{kind.lower()}-keda-v1alpha1.json").read_text())
    schema = strict_crd_schema(schema)
    schema["$id"] = f"https://kubernetes.io/api/{kind.lower()}-keda-sh-v1alpha1.json"
    schema["properties"]["metadata"] = {
        "$ref": "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    }
    definitions_file = (
        importlib.resources.files("kubernetes_validate")
        / "kubernetes-json-schema"
        / f"v{kube_version}-local-strict"
        / "_definitions.json"
    )
    definitions = referencing.Resource.from_contents(
        json.loads(definitions_file.read_text()),
        default_specification=referencing.jsonschema.DRAFT202012,
    )
    registry: referencing.Registry[Any] = definitions @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def schema_errors(manifest: Manifest, kube_version: str) -> list[str]:
    """Why the API server (with KEDA installed) would refuse the manifest; empty if it would not."""
    if manifest["apiVersion"] == "keda.sh/v1alpha1":
        validator = keda_validator(manifest["kind"], kube_version)
        return [
            f"{'.'.join(map(str, error.path))}: {error.message}"
            for error in validator.iter_errors(manifest)
        ]
    try:
        kubernetes_validate.validate(manifest, kube_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_is_valid_for_kubernetes(name: str, kube_version: str) -> None:
    for manifest in rendered(name):
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        # SchemaNotFoundError (a kind the API server would not know) fails the test too
        assert schema_errors(manifest, kube_version) == [], where


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("StatefulSet", ["spec", "template", "spec", "containers", 0, "readinessProbes"], {}),
        ("Deployment", ["spec", "template", "spec", "securityContext", "runAsUsr"], 10001),
        ("ScaledObject", ["spec", "maxReplicas"], 10),
        ("ScaledObject", ["spec", "triggers", 0, "metadata", "pendingEntriesCount"], 1000),
        ("ScaledObject", ["spec", "triggers", 1, "type"], None),
        ("TriggerAuthentication", ["spec", "secretTargetRef", 0, "secret"], "x"),
    ],
)
def test_the_schema_checks_do_refuse_mistakes(kind: str, path: list[Any], value: Any) -> None:
    """A misspelt field, a number where KEDA wants a string, a missing trigger type: refused."""
    manifest = one(rendered("minimal"), kind)
    node: Any = manifest
    for step in path[:-1]:
        node = node[step]
    if value is None:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    for kube_version in KUBE_VERSIONS:
        assert schema_errors(manifest, kube_version) != []


# ---- values.schema.json --------------------------------------------------------------------


def chart_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((CHART / "values.schema.json").read_text())
    return schema


def test_values_schema_is_draft_07_and_closed() -> None:
    schema = chart_schema()
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)

    def closed(node: Any, where: str) -> Iterator[str]:
        if isinstance(node, dict):
            if "properties" in node and node.get("additionalProperties") is not False:
                yield where
            for key, value in node.items():
                # conditions narrow an object that is declared (and closed) beside them
                if key not in {"if", "then", "else"}:
                    yield from closed(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                yield from closed(value, f"{where}/{index}")

    assert list(closed(schema, "#")) == [], "objects that admit unknown keys"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_value_sets_meet_the_schema(name: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(value_set(name))
        merged = chart.merge_values(value_set(name))
    jsonschema.Draft7Validator(chart_schema()).validate(merged)


BAD_VALUES = {
    "unknown top-level key": {"replicaCount": 3},
    "unknown key in api": {"api": {"replica": 2}},
    "unknown key deep down": {"worker": {"autoscaling": {"prometheus": {"querry": "up"}}}},
    "unknown key in a network peer": {"networkPolicy": {"apiFrom": [{"namespaceSelectr": {}}]}},
    "number as a string": {"api": {"autoscaling": {"maxReplicas": "6"}}},
    "boolean as a string": {"api": {"gpu": {"enabled": "yes"}}},
    "object as a string": {"api": {"resources": "2 cpus"}},
    "bad quantity": {"api": {"resources": {"requests": {"cpu": "two"}}}},
    "port out of range": {"postgresql": {"port": 70000}},
    "unknown log level": {"logging": {"level": "TRACE"}},
    "model pins not name=version": {"api": {"settings": {"modelVersions": "churn:2"}}},
    "no GPU": {"api": {"gpu": {"count": 0}}},
    "zero workers": {"worker": {"autoscaling": {"minReplicas": 0}}},
    "zero threshold": {"worker": {"autoscaling": {"prometheus": {"threshold": 0}}}},
    "prometheus without a scheme": {
        "worker": {"autoscaling": {"prometheus": {"serverAddress": "prometheus:9090"}}}
    },
    "grace period shorter than the drain": {"api": {"terminationGracePeriodSeconds": 20}},
    "no redis secret": {"redis": {"existingSecret": ""}},
    "models image without a repository": {"models": {"source": "image"}},
    "unknown models source": {"models": {"source": "s3"}},
    "spool without a unit": {"api": {"spool": {"size": "2"}}},
    "unknown access mode": {"api": {"spool": {"accessModes": ["ReadWriteAll"]}}},
    "env var without a name": {"api": {"extraEnv": [{"value": "1"}]}},
    "bad pull policy": {"worker": {"image": {"pullPolicy": "Sometimes"}}},
}


@pytest.mark.parametrize("override", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_values_schema_refuses_bad_values(override: dict[str, Any]) -> None:
    values = deep_merge(value_set("minimal"), override)
    with pytest.raises(helm.HelmValuesError):
        render(values)
    # and a second, independent implementation of draft-07 agrees
    with helm.Chart.load(CHART) as chart:
        merged = chart.merge_values(values)
    assert not jsonschema.Draft7Validator(chart_schema()).is_valid(merged)


def test_defaults_alone_do_not_install() -> None:
    """Where PostgreSQL and Redis are and the Secret with their passwords have no defaults."""
    with pytest.raises(helm.HelmValuesError) as refused:
        render({})
    for path in ("/postgresql/host", "/postgresql/existingSecret", "/redis/host"):
        assert path in str(refused.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"api": {"terminationGracePeriodSeconds": 40, "preStopSleepSeconds": 15}},
            "must exceed api.preStopSleepSeconds",
        ),
        ({"api": {"autoscaling": {"minReplicas": 5, "maxReplicas": 3}}}, "api.autoscaling"),
        ({"worker": {"autoscaling": {"maxReplicas": 0}}}, "maxReplicas"),
    ],
)
def test_values_that_contradict_each_other_are_refused(
    override: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(deep_merge(value_set("minimal"), override))


def leaf_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if isinstance(value, dict) and value:
            yield from leaf_paths(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_readme_documents_every_value() -> None:
    """Each value, or the object it belongs to (`api.resources`), is in the chart README."""
    readme = (CHART / "README.md").read_text()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def documented(path: str) -> bool:
        parts = path.split(".")
        prefixes = [".".join(parts[:n]) for n in range(len(parts), 1, -1)] or [path]
        return any(f"`{prefix}`" in readme for prefix in prefixes)

    assert [path for path in leaf_paths(defaults) if not documented(path)] == []


# ---- every pod ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_pod_is_locked_down(name: str) -> None:
    specs = all_pod_specs(rendered(name))
    # API, worker and migration always; the test pod unless disabled
    assert len(specs) >= 3
    for where, spec in specs:
        assert spec["automountServiceAccountToken"] is False, where
        assert not any(spec.get(key) for key in ("hostNetwork", "hostPID", "hostIPC")), where
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, where
        assert pod_context["runAsUser"] == 10001, where
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert not any("hostPath" in volume for volume in spec.get("volumes", [])), where
        for c in spec["containers"] + spec.get("initContainers", []):
            at = f"{where}: container {c['name']}"
            context = c["securityContext"]
            assert context["runAsNonRoot"] is True, at
            assert context["runAsUser"] == 10001, at
            assert context["allowPrivilegeEscalation"] is False, at
            assert context["readOnlyRootFilesystem"] is True, at
            assert context.get("privileged", False) is False, at
            assert context["capabilities"] == {"drop": ["ALL"]}, at
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, at
            assert c["resources"]["requests"], at
            assert c["resources"]["limits"]["memory"], at


@pytest.mark.parametrize("name", VALUE_SETS)
def test_service_accounts_carry_no_token(name: str) -> None:
    for account in find(rendered(name), "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("name", VALUE_SETS)
def test_secrets_are_only_referenced(name: str) -> None:
    """Passwords and API keys come from existing Secrets; the chart renders none."""
    manifests = rendered(name)
    assert find(manifests, "Secret") == []
    for where, spec in all_pod_specs(manifests):
        for c in spec["containers"]:
            for variable in c.get("env", []):
                if re.search(r"PASSWORD|API_KEYS|SECRET|TOKEN", variable["name"]):
                    assert "secretKeyRef" in variable["valueFrom"], f"{where}: {variable['name']}"


# ---- the API --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_api_writes_only_to_its_volumes(name: str) -> None:
    manifests = rendered(name)
    spec = api_spec(manifests)
    api = container(spec, "api")
    mounts = {m["mountPath"]: m for m in api["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert set(mounts) == {"/models", "/spool", "/tmp", "/run/berth-metrics"}
    assert mounts["/models"]["readOnly"] is True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert "emptyDir" in volumes[mounts["/run/berth-metrics"]["name"]]
    env = env_of(api)
    assert env["MODELS_DIR"] == "/models"
    assert env["SPOOL_DIR"] == "/spool"
    assert env["METRICS_DIR"] == "/run/berth-metrics"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_api_spool_outlives_its_pod(name: str) -> None:
    """A spooled record is an answered prediction: never on an emptyDir, never deleted with the
    pod or by a scale-down."""
    statefulset = one(rendered(name), "StatefulSet")
    spec = statefulset["spec"]["template"]["spec"]
    spool_mount = next(
        m for m in container(spec, "api")["volumeMounts"] if m["mountPath"] == "/spool"
    )
    volume = next((v for v in spec["volumes"] if v["name"] == spool_mount["name"]), None)
    if volume is None:  # one claim per pod
        (template,) = [
            t
            for t in statefulset["spec"]["volumeClaimTemplates"]
            if t["metadata"]["name"] == spool_mount["name"]
        ]
        assert template["spec"]["resources"]["requests"]["storage"]
        assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"] == {
            "whenDeleted": "Retain",
            "whenScaled": "Retain",
        }
    else:  # one shared ReadWriteMany claim
        assert (
            volume["persistentVolumeClaim"]["claimName"]
            == value_set(name)["api"]["spool"]["existingClaim"]
        )
        assert "volumeClaimTemplates" not in statefulset["spec"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_api_probes_and_graceful_termination(name: str) -> None:
    spec = api_spec(rendered(name))
    api = container(spec, "api")
    assert {p["containerPort"] for p in api["ports"]} == {8000, 9100}
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    pause = int(api["lifecycle"]["preStop"]["exec"]["command"][1])
    # uvicorn drains for up to 30 s after SIGTERM, which comes after the preStop pause
    assert spec["terminationGracePeriodSeconds"] > pause + 30


@pytest.mark.parametrize("name", VALUE_SETS)
def test_api_autoscaler_and_disruption_budget(name: str) -> None:
    manifests = rendered(name)
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), value_set(name))
    statefulset = one(manifests, "StatefulSet")
    selector = statefulset["spec"]["selector"]["matchLabels"]
    if values["api"]["autoscaling"]["enabled"]:
        hpa = one(manifests, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": statefulset["metadata"]["name"],
        }
        # the autoscaler owns the replica count; an upgrade must not reset it
        assert "replicas" not in statefulset["spec"]
    else:
        assert find(manifests, "HorizontalPodAutoscaler") == []
        assert statefulset["spec"]["replicas"] == values["api"]["replicas"]
    if values["api"]["podDisruptionBudget"]["enabled"]:
        pdb = one(manifests, "PodDisruptionBudget")
        assert pdb["spec"]["selector"]["matchLabels"] == selector
        assert (
            pdb["spec"]["maxUnavailable"] == values["api"]["podDisruptionBudget"]["maxUnavailable"]
        )


def test_gpu_variant() -> None:
    values = value_set("gpu")
    spec = api_spec(rendered("gpu"))
    api = container(spec, "api")
    assert api["image"] == "registry.example.com/ml/berth-api:1.4.2-gpu"
    assert api["resources"]["limits"]["nvidia.com/gpu"] == values["api"]["gpu"]["count"]
    assert spec["nodeSelector"] == {"accelerator": "nvidia-l4", "kubernetes.io/os": "linux"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    # without it: the CPU image, no GPU requested
    cpu = container(api_spec(rendered("minimal")), "api")
    assert cpu["image"] == f"berth-api:{chart_app_version()}"
    assert not any("gpu" in resource for resource in cpu["resources"].get("limits", {}))


def chart_app_version() -> str:
    version: str = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return version


def test_models_from_a_claim_or_an_image() -> None:
    on_claim = api_spec(rendered("minimal"))
    (models,) = [v for v in on_claim["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"] == {"claimName": "demo-berth-models", "readOnly": True}
    assert one(rendered("minimal"), "PersistentVolumeClaim")["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep"
    }

    existing = api_spec(rendered("static"))
    (models,) = [v for v in existing["volumes"] if v["name"] == "models"]
    assert models["persistentVolumeClaim"]["claimName"] == "berth-bundles"
    assert find(rendered("static"), "PersistentVolumeClaim") == []

    from_image = api_spec(rendered("image-models"))
    (models,) = [v for v in from_image["volumes"] if v["name"] == "models"]
    assert "emptyDir" in models
    (init,) = from_image["initContainers"]
    assert init["image"] == "registry.example.com/ml/berth-bundles:2026-11-30"
    assert init["command"] == ["cp", "-R", "/bundles/.", "/models/"]
    assert init["volumeMounts"] == [{"name": "models", "mountPath": "/models"}]


def test_api_settings_and_keys() -> None:
    api = container(api_spec(rendered("image-models")), "api")
    env = env_of(api)
    assert env["DEFAULT_MODEL"] == "churn"
    assert env["MODEL_VERSIONS"] == "fraud=7,iris=1"
    assert env["API_WORKERS"] == "4"
    assert env["ACCESS_LOG"] == "off"
    assert env["API_KEYS"] == {"secretKeyRef": {"name": "berth-api-keys", "key": "api-keys"}}
    assert env["MAX_BATCH_ROWS"] == "5000"
    assert env["POSTGRES_HOST"] == "pg.example.internal"
    assert env["POSTGRES_PORT"] == "6432"
    assert "API_KEYS" not in env_of(container(api_spec(rendered("minimal")), "api"))


# ---- the migration --------------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_migration_runs_first_with_the_worker_image(name: str) -> None:
    manifests = rendered(name)
    job = one(manifests, "Job")
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    spec = job["spec"]["template"]["spec"]
    (migrate,) = spec["containers"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate["workingDir"] == "/app"
    worker = container(one(manifests, "Deployment")["spec"]["template"]["spec"], "worker")
    assert migrate["image"] == worker["image"]
    # it runs before the chart's own objects exist: it may not need any of them
    assert "serviceAccountName" not in spec
    for variable in migrate["env"]:
        if "valueFrom" in variable:
            secret = variable["valueFrom"]["secretKeyRef"]["name"]
            assert secret in {
                value_set(name)["postgresql"]["existingSecret"],
                value_set(name)["redis"]["existingSecret"],
            }


# ---- the worker and its autoscaling -----------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_SETS)
def test_worker(name: str) -> None:
    deployment = one(rendered(name), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    worker = container(spec, "worker")
    assert {p["containerPort"] for p in worker["ports"]} == {9101}
    check = ["python", "-m", "berth_worker", "--check"]
    assert worker["livenessProbe"]["exec"]["command"] == check
    assert worker["startupProbe"]["exec"]["command"] == check
    assert worker["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "emptyDir" in spec["volumes"][0]
    assert env_of(worker)["WORKER_CONSUMER_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


# The metadata each scaler reads (KEDA's scaler documentation): a misspelt key would be ignored
# by KEDA, not refused, since trigger metadata is a plain map in the CRD.
KEDA_TRIGGER_METADATA = {
    "redis-streams": {
        "address", "host", "port", "username", "databaseIndex", "stream", "consumerGroup",
        "pendingEntriesCount", "streamLength", "lagCount", "activationLagCount", "enableTLS",
        "unsafeSsl",
    },
    "prometheus": {
        "serverAddress", "query", "queryParameters", "threshold", "activationThreshold",
        "namespace", "customHeaders", "ignoreNullValues", "unsafeSsl", "timeout",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", ["minimal", "gpu", "image-models"])
def test_workers_scale_on_the_ledger_backlog(name: str) -> None:
    manifests = rendered(name)
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), value_set(name))
    scaling = values["worker"]["autoscaling"]
    deployment = one(manifests, "Deployment")
    scaled = one(manifests, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert "replicas" not in deployment["spec"]  # KEDA's HPA owns it
    assert scaled["spec"]["minReplicaCount"] == scaling["minReplicas"]
    assert scaled["spec"]["maxReplicaCount"] == scaling["maxReplicas"]

    triggers = {t["type"]: t for t in scaled["spec"]["triggers"]}
    assert set(triggers) == {"redis-streams", "prometheus"}
    for trigger in triggers.values():
        assert set(trigger["metadata"]) <= KEDA_TRIGGER_METADATA[trigger["type"]]

    redis = triggers["redis-streams"]
    assert redis["metadata"]["stream"] == f"{values['redis']['keyPrefix']}:ledger"
    assert redis["metadata"]["consumerGroup"] == "writers"
    assert redis["metadata"]["pendingEntriesCount"] == str(scaling["pendingEntriesCount"])
    assert redis["metadata"]["address"] == f"{values['redis']['host']}:{values['redis']['port']}"
    assert redis["metadata"]["databaseIndex"] == str(values["redis"]["db"])
    # XINFO GROUPS' lag is wrong after trims and claims: unread entries come from Prometheus
    assert not {"lagCount", "activationLagCount", "streamLength"} & set(redis["metadata"])
    auth = one(manifests, "TriggerAuthentication", redis["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"] == [
        {
            "parameter": "password",
            "name": values["redis"]["existingSecret"],
            "key": values["redis"]["passwordKey"],
        }
    ]

    prometheus = triggers["prometheus"]["metadata"]
    assert prometheus["serverAddress"] == scaling["prometheus"]["serverAddress"]
    assert re.fullmatch(
        r'max\(berth_ledger_backlog_entries\{state="unread", namespace="ml".*\}\)',
        prometheus["query"],
    )
    assert float(prometheus["threshold"]) == scaling["prometheus"]["threshold"]


def test_workers_without_keda() -> None:
    manifests = rendered("static")
    assert find(manifests, "ScaledObject") == find(manifests, "TriggerAuthentication") == []
    assert one(manifests, "Deployment")["spec"]["replicas"] == 2


# ---- the network ----------------------------------------------------------------------------


def ingress_ports(policy: Manifest) -> dict[int, list[Any] | None]:
    """Port -> the peers admitted to it (None: anyone)."""
    admitted: dict[int, list[Any] | None] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            admitted[port["port"]] = rule.get("from")
    return admitted


@pytest.mark.parametrize("name", ["minimal", "image-models"])
def test_network_policy_admits_only_the_api_and_metrics_ports(name: str) -> None:
    manifests = rendered(name)
    values = deep_merge(yaml.safe_load((CHART / "values.yaml").read_text()), value_set(name))
    policies = {
        p["metadata"]["name"].rsplit("-", 1)[-1]: p for p in find(manifests, "NetworkPolicy")
    }
    monitoring = [{"namespaceSelector": values["networkPolicy"]["metricsNamespaceSelector"]}]
    if values["networkPolicy"]["metricsPodSelector"]:
        monitoring[0]["podSelector"] = values["networkPolicy"]["metricsPodSelector"]

    api = ingress_ports(policies["api"])
    assert set(api) == {8000, 9100}
    assert api[9100] == monitoring
    if values["networkPolicy"]["apiFrom"]:
        assert api[8000] is not None
        assert all(peer in api[8000] for peer in values["networkPolicy"]["apiFrom"])
    else:
        assert api[8000] is None
    assert ingress_ports(policies["worker"]) == {9101: monitoring}
    assert "ingress" not in policies["ingress"]["spec"]  # the migration and test pods

    # every pod of the release is selected by a policy, and every policy restricts ingress
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies.values())
    workloads = [m for m in manifests if any(pod_specs(m))]
    for workload in workloads:
        template = workload["spec"].get("template", workload)
        labels = template["metadata"]["labels"]
        assert any(selects(p["spec"]["podSelector"], labels) for p in policies.values()), (
            f"{workload['kind']}/{workload['metadata']['name']}"
        )


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def test_network_policy_can_be_left_out() -> None:
    assert find(rendered("static"), "NetworkPolicy") == []
