"""The API's paths, declared once: which exist, which need no key, and through which door a
prediction body is read.

The plain-ASGI router (`dispatch`) serves the prediction endpoints from this table, FastAPI
documents them from it (`/docs`, `/openapi.json`), the access policy takes its public paths from
it, and error documents take their protocol members from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from berth_api.errors import ErrorStyle
from berth_api.protocols.door import Door
from berth_api.protocols.kserve_v1 import KServeV1Door
from berth_api.protocols.mlflow import MlflowDoor
from berth_api.protocols.rest import RestDoor
from berth_api.protocols.v2 import V2Door

_PARAMETER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class PredictionEndpoint:
    """`POST path`: rows in through `door`, answered by the model the path names (or the
    default model when it names none)."""

    operation: str
    path: str
    door: Door
    summary: str
    tag: str
    pattern: re.Pattern[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # A parameter is one path segment, as Starlette matches it (":predict" after it is then
        # found by backtracking: TF Serving's form).
        parts = _PARAMETER.split(self.path)  # literal, name, literal, name, ..., literal
        regex = "".join(
            f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
        )
        object.__setattr__(self, "pattern", re.compile(f"^{regex}$"))

    @property
    def parameters(self) -> list[str]:
        return _PARAMETER.findall(self.path)

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.match(path)
        return found.groupdict() if found else None


REST_TAG = "predictions"
V2_TAG = "open inference protocol (v2)"
KSERVE_TAG = "tensorflow serving / kserve v1"
MLFLOW_TAG = "mlflow / sagemaker"

PREDICTION_ENDPOINTS: tuple[PredictionEndpoint, ...] = (
    PredictionEndpoint(
        "predict_default",
        "/predict",
        RestDoor(default_route=True),
        'Predict with the default model; also takes the tutorial body {"features": [...]}',
        REST_TAG,
    ),
    PredictionEndpoint(
        "predict",
        "/v1/models/{name}/predict",
        RestDoor(default_route=False),
        "Predict with the version of model `name` that the server resolves it to",
        REST_TAG,
    ),
    PredictionEndpoint(
        "predict_version",
        "/v1/models/{name}/versions/{version}/predict",
        RestDoor(default_route=False),
        "Predict with one specific version of model `name`",
        REST_TAG,
    ),
    PredictionEndpoint(
        "v2_infer",
        "/v2/models/{name}/infer",
        V2Door(),
        "V2 inference: one 2-D input [rows, features] or one input per feature",
        V2_TAG,
    ),
    PredictionEndpoint(
        "v2_infer_version",
        "/v2/models/{name}/versions/{version}/infer",
        V2Door(),
        "V2 inference against one version of the model",
        V2_TAG,
    ),
    PredictionEndpoint(
        "kserve_v1_predict",
        "/v1/models/{name}:predict",
        KServeV1Door(),
        'TensorFlow Serving / KServe V1 predict: {"instances": [...]} or {"inputs": ...}',
        KSERVE_TAG,
    ),
    PredictionEndpoint(
        "kserve_v1_predict_version",
        "/v1/models/{name}/versions/{version}:predict",
        KServeV1Door(),
        "TensorFlow Serving / KServe V1 predict against one version of the model",
        KSERVE_TAG,
    ),
    PredictionEndpoint(
        "invocations",
        "/invocations",
        MlflowDoor(),
        "Score rows with the default model: MLflow's JSON formats or CSV with a header row",
        MLFLOW_TAG,
    ),
)

# Answered to anyone, keys or not: health for orchestrators and load balancers, the docs, and the
# dashboard's login form (which takes the key). /readyz and /openapi.json then leave out what only
# a key holder may see (see the routes).
PUBLIC_PATHS = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/ping",
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/docs/oauth2-redirect",
        "/redoc",
        "/openapi.json",
        "/dashboard/login",
        # what the login form itself loads
        "/dashboard/static/dashboard.css",
        "/dashboard/static/favicon.svg",
    }
)


def prediction_endpoint(path: str) -> tuple[PredictionEndpoint, dict[str, str]] | None:
    for endpoint in PREDICTION_ENDPOINTS:
        parameters = endpoint.match(path)
        if parameters is not None:
            return endpoint, parameters
    return None


def error_style(path: str) -> ErrorStyle:
    """How an error on `path` is written, wherever it is raised (access check, body limit,
    router, FastAPI)."""
    found = prediction_endpoint(path)
    if found is not None:
        return found[0].door.style
    if path.startswith("/v2/") or path == "/v2":
        return ErrorStyle.V2
    if path.startswith("/v1/models/"):
        # a model's details are also TensorFlow Serving / KServe V1's model status, whose
        # clients read the error's reason only from `error` in application/json
        return ErrorStyle.KSERVE_V1
    if path == "/ping":
        return ErrorStyle.MLFLOW
    return ErrorStyle.PROBLEM
