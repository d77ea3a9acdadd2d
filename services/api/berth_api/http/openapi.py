"""The OpenAPI document, with one documented predict path per served model.

`/v1/models/{name}/predict` takes any model's rows, so its schema cannot say which features a
model wants. For each served model the document also lists `/v1/models/<name>/predict` with that
model's feature names, types and an example row, so `/docs` alone is enough to call it.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from berth_api.bundles.bundle import BundleMetadata
from berth_api.protocols.v2 import InferenceRequest
from berth_api.serving.registry import ModelRegistry

_JSON_TYPES = {"number": "number", "integer": "integer", "string": "string", "boolean": "boolean"}
_ZERO: dict[str, Any] = {"number": 0.0, "integer": 0, "string": "", "boolean": False}
GENERIC_PREDICT = "/v1/models/{name}/predict"


def build_openapi(app: FastAPI, registry: ModelRegistry | None) -> dict[str, Any]:
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        description=app.description,
        routes=app.routes,
    )
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    # bodies that routes parse themselves (V2 binary tensors) are documented here
    v2_request = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(v2_request.pop("$defs", {}))
    components["InferenceRequest"] = v2_request
    if registry is not None:
        _add_model_paths(schema, registry)
    _document_problems(schema)
    return schema


# Errors any operation can answer: the middleware refuses oversized bodies (413) and unusable
# request ids (400) everywhere, and every error is a problem document.
_PROBLEM_STATUSES = {
    400: "Malformed request (body or X-Request-ID)",
    401: "Missing or wrong API key (when API_KEYS is set)",
    404: "Unknown model, version, request id or route",
    413: "Request body larger than MAX_BODY_BYTES",
    415: "Unsupported content type",
    422: "Invalid input; `errors` names each offending field",
    500: "Unexpected error",
    503: "Model not loaded or database unreachable",
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details; /v2 paths add `error`, /invocations "
    "`error_code` and `message`.",
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
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    for operations in schema["paths"].values():
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
