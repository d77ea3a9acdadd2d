"""The OpenAPI document, with one documented predict path per served model.

`/v1/models/{name}/predict` takes any model's rows, so its schema cannot say which features a
model wants. For each served model the document also lists `/v1/models/<name>/predict` with that
model's feature names, types and an example row, so `/docs` alone is enough to call it. That
catalogue is for key holders only: with API_KEYS set, a request without a key gets the document
without the per-model paths.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from berth_api.bundles.bundle import BundleMetadata
from berth_api.http.endpoints import PredictionEndpoint, error_style
from berth_api.http.problems import media_type
from berth_api.protocols.kserve_v1 import KServeV1Door
from berth_api.protocols.mlflow import MlflowDoor
from berth_api.protocols.rest import RestDoor
from berth_api.protocols.v2 import InferenceRequest, InferenceResponse, V2Door
from berth_api.schemas import (
    DefaultPredictRequest,
    KServeV1Request,
    PredictionsResponse,
    PredictRequest,
    PredictResponse,
)
from berth_api.serving.registry import ModelRegistry

_JSON_TYPES = {"number": "number", "integer": "integer", "string": "string", "boolean": "boolean"}
_ZERO: dict[str, Any] = {"number": 0.0, "integer": 0, "string": "", "boolean": False}
GENERIC_PREDICT = "/v1/models/{name}/predict"


# Request bodies the doors parse themselves, documented as components.
_REQUEST_MODELS = (DefaultPredictRequest, PredictRequest, InferenceRequest, KServeV1Request)


def build_openapi(app: FastAPI, registry: ModelRegistry | None) -> dict[str, Any]:
    """The document; with a registry, also each served model's own predict path."""
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in _REQUEST_MODELS:
        document = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(document.pop("$defs", {}))
        components[model.__name__] = document
    if registry is not None:
        _add_model_paths(schema, registry)
    _document_problems(schema)
    return schema


def documentation_for(endpoint: PredictionEndpoint) -> dict[str, Any]:
    """FastAPI route arguments that document a declared prediction endpoint."""
    door = endpoint.door
    response_model: type[Any] = PredictionsResponse
    body: dict[str, Any]
    if isinstance(door, RestDoor):
        model = "DefaultPredictRequest" if not endpoint.parameters else "PredictRequest"
        body = {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}
        response_model = PredictResponse
    elif isinstance(door, V2Door):
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}}
        response_model = InferenceResponse
    elif isinstance(door, KServeV1Door):
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/KServeV1Request"}}}
    else:
        assert isinstance(door, MlflowDoor)
        body = MLFLOW_BODY
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in endpoint.parameters
    ]
    return {
        "response_model": response_model,
        "openapi_extra": {
            "requestBody": {"required": True, "content": body},
            "parameters": parameters,
        },
    }


_IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
_IRIS_ROW = [5.1, 3.5, 1.4, 0.2]
MLFLOW_BODY: dict[str, Any] = {
    "application/json": {
        "schema": {"type": "object"},
        "examples": {
            "dataframe_split": {
                "value": {"dataframe_split": {"columns": _IRIS, "data": [_IRIS_ROW]}}
            },
            "dataframe_records": {
                "value": {"dataframe_records": [dict(zip(_IRIS, _IRIS_ROW, strict=True))]}
            },
            "instances": {"value": {"instances": [_IRIS_ROW]}},
            "inputs": {
                "value": {"inputs": {n: [v] for n, v in zip(_IRIS, _IRIS_ROW, strict=True)}}
            },
        },
    },
    "text/csv": {
        "schema": {"type": "string"},
        "example": ",".join(_IRIS) + "\n" + ",".join(str(v) for v in _IRIS_ROW) + "\n",
    },
}


# Errors any operation can answer: the middleware refuses oversized bodies (413) and unusable
# request ids (400) everywhere, and every error is a problem document.
_PROBLEM_STATUSES = {
    400: "Malformed request (body, headers or X-Request-ID)",
    401: "Missing or wrong API key (when API_KEYS is set)",
    404: "Unknown model, version, request id or route",
    408: "The request did not arrive in time (REQUEST_*_TIMEOUT_SECONDS)",
    409: "X-Request-ID already used for another request, or that request is still running",
    413: "Request body larger than MAX_BODY_BYTES",
    415: "Unsupported content type",
    422: "Invalid input; `errors` names each offending field",
    500: "Unexpected error",
    503: "Model not loaded or database unreachable",
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; /v2 and :predict paths add `error`, "
    "/invocations `error_code` and `message`.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message"],
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
        "error": {"type": "string"},
        "error_code": {"type": "string"},
        "message": {"type": "string"},
    },
}


def _document_problems(schema: dict[str, Any]) -> None:
    components = schema["components"]["schemas"]
    components["Problem"] = PROBLEM_SCHEMA
    reference = {"schema": {"$ref": "#/components/schemas/Problem"}}
    for path, operations in schema["paths"].items():
        problem = {media_type(error_style(path)): reference}
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for status, description in _PROBLEM_STATUSES.items():
                entry = responses.setdefault(str(status), {"description": description})
                if str(status) == "422":
                    entry["content"] = {}  # FastAPI's default 422 body is not what we send
                entry.setdefault("content", {}).update(problem)
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _add_model_paths(schema: dict[str, Any], registry: ModelRegistry) -> None:
    generic = schema["paths"].get(GENERIC_PREDICT, {}).get("post")
    if generic is None:
        return
    components = schema["components"]["schemas"]
    for name in sorted(registry.resolved):
        try:
            metadata = registry.get(name).bundle.metadata
        except Exception:  # noqa: S112 - a model that is not served has no path
            continue
        component = f"{_component_name(name)}Rows"
        components[component] = _rows_schema(metadata)
        operation = copy.deepcopy(generic)
        operation["operationId"] = f"predict_{_component_name(name)}"
        operation["summary"] = f"Predict with {name} (version {metadata.version})"
        operation["description"] = (
            f"{metadata.description or metadata.estimator}\n\n"
            f"Features, in order: " + ", ".join(f"`{f.name}` ({f.type})" for f in metadata.features)
        )
        operation["parameters"] = [
            p for p in operation.get("parameters", []) if p.get("name") != "name"
        ]
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": f"#/components/schemas/{component}"},
                    "example": {"instances": [_example(metadata)]},
                }
            },
        }
        operation["tags"] = ["models: " + name]
        schema["paths"][f"/v1/models/{name}/predict"] = {"post": operation}


def _rows_schema(metadata: BundleMetadata) -> dict[str, Any]:
    features = metadata.features
    by_name = {
        "type": "object",
        "properties": {f.name: {"type": _JSON_TYPES[f.type]} for f in features},
        "required": [f.name for f in features],
        "additionalProperties": False,
    }
    in_order = {
        "type": "array",
        "prefixItems": [{"type": _JSON_TYPES[f.type], "title": f.name} for f in features],
        "minItems": len(features),
        "maxItems": len(features),
    }
    return {
        "type": "object",
        "title": f"Rows for {metadata.name}",
        "properties": {
            "instances": {"type": "array", "minItems": 1, "items": {"anyOf": [by_name, in_order]}}
        },
        "required": ["instances"],
        "additionalProperties": False,
    }


def _example(metadata: BundleMetadata) -> dict[str, Any]:
    if metadata.example is not None:
        return dict(metadata.example)
    return {f.name: _ZERO[f.type] for f in metadata.features}


def _component_name(name: str) -> str:
    return "".join(
        part.capitalize() for part in name.replace("-", "_").replace(".", "_").split("_")
    )
