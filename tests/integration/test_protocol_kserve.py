"""TensorFlow Serving / KServe V1 predict, through the KServe Python SDK and as raw JSON; and the
V2 routes through the same SDK (Triton's client speaks V2 in test_protocol_v2.py).

The SDK cannot be installed beside Berth (requirements/kserve-client.txt says why), so
tests/clients/kserve_sdk.py runs it in a subprocess with the interpreter BERTH_KSERVE_PYTHON names.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict
from typing import Any

import httpx
import pytest
import redis

from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings
from tests.conftest import ROOT

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [5.9, 3.0, 4.2, 1.5], [6.7, 3.0, 5.2, 2.3]]
LABELS = ["setosa", "versicolor", "virginica"]
OBJECTS = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
COLUMNS = {name: [row[i] for row in ROWS] for i, name in enumerate(FEATURES)}

SDK_PROGRAM = ROOT / "tests" / "clients" / "kserve_sdk.py"
SDK_PYTHON = "BERTH_KSERVE_PYTHON"
BUILD_HINT = (
    "build it with `make .venv-kserve/.installed` and set "
    f"{SDK_PYTHON}=$PWD/.venv-kserve/bin/python (`make test-local` does both; the tests image "
    "of `make test` has it at /opt/kserve-client)"
)

Result = dict[str, Any]
ServedRow = tuple[int, dict[str, Any], Any]


@pytest.fixture
def settings(caching: ApiSettings) -> ApiSettings:
    """The demo model cached, though it is quicker than the cache: the SDK's calls and Berth's
    own route must share one cache."""
    return caching


def kserve_sdk(address: str, protocol: str, calls: list[dict[str, Any]]) -> list[Result]:
    """Each call's result from tests/clients/kserve_sdk.py (its docstring has the grammar)."""
    python = os.environ.get(SDK_PYTHON)
    if not python:
        pytest.fail(
            f"{SDK_PYTHON} is not set: it names the KServe SDK's Python; {BUILD_HINT}",
            pytrace=False,
        )
    if not os.access(python, os.X_OK):
        pytest.fail(f"{SDK_PYTHON}={python} is not an executable; {BUILD_HINT}", pytrace=False)
    # -I: the SDK's environment alone, whatever PYTHONPATH says (the tests image points it at
    # Berth's sources)
    completed = subprocess.run(
        [python, "-I", str(SDK_PROGRAM), f"http://{address}", protocol],
        input=json.dumps(calls),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    results: list[Result] = json.loads(completed.stdout)
    assert len(results) == len(calls)
    return results


def served(redis_client: redis.Redis, settings: ApiSettings) -> dict[str, list[ServedRow]]:
    """The rows in the ledger stream, by request id: (row index, features, prediction)."""
    rows: dict[str, list[ServedRow]] = defaultdict(list)
    for _, fields in redis_client.xrange(settings.ledger_stream):
        for record in decode_entry(fields):
            rows[record.request_id].append((record.row_index, record.features, record.prediction))
    return dict(rows)


def expected_rows() -> list[ServedRow]:
    return [(i, OBJECTS[i], label) for i, label in enumerate(LABELS)]


def v1_call(body: Any, *, model: str = "iris", request_id: str | None = None) -> dict[str, Any]:
    headers = {"X-Request-ID": request_id} if request_id else {}
    return {"call": "infer", "model": model, "body": body, "headers": headers}


def v2_call(
    request_id: str, *, binary: bool, model: str = "iris", width: int = 4
) -> dict[str, Any]:
    tensor = {"name": "input-0", "datatype": "FP64", "data": [row[:width] for row in ROWS]}
    return {
        "call": "infer",
        "model": model,
        "id": request_id,
        "binary": binary,
        "inputs": [tensor],
    }


# ---- through the KServe SDK ----------------------------------------------------------------


def test_v1_health_through_the_sdk(live_api: str) -> None:
    live, iris, unknown = kserve_sdk(
        live_api,
        "v1",
        [
            {"call": "is_server_live"},
            {"call": "is_model_ready", "model": "iris"},
            {"call": "is_model_ready", "model": "nope"},
        ],
    )
    assert live == {"value": True}
    assert iris == {"value": True}
    # V1 has no "not ready" for a model that does not exist: the SDK raises the 404, quoting
    # the server's reason
    assert unknown["error"]["status"] == 404
    assert "no model named 'nope'" in unknown["error"]["message"]


def test_v1_model_readiness_error_is_read_by_kserve_clients(live_api: str) -> None:
    response = httpx.get(f"http://{live_api}/v1/models/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "no model named 'nope'" in response.json()["error"]


def test_v1_infer_through_the_sdk(
    live_api: str, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    calls = [
        v1_call({"instances": ROWS}, request_id="sdk-v1-lists"),
        v1_call({"instances": OBJECTS}, request_id="sdk-v1-objects"),
    ]
    as_lists, as_objects = kserve_sdk(live_api, "v1", calls)
    assert as_lists == {"value": {"predictions": LABELS}}
    assert as_objects == {"value": {"predictions": LABELS}}
    assert served(redis_client, settings) == {
        "sdk-v1-lists": expected_rows(),
        "sdk-v1-objects": expected_rows(),
    }

    # the same service and cache as Berth's own route: the same labels, from the cache
    response = httpx.post(f"http://{live_api}/predict", json={"instances": ROWS})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["label"] for p in predictions] == LABELS
    assert all(p["cached"] for p in predictions)


def test_v2_health_through_the_sdk(live_api: str) -> None:
    results = kserve_sdk(
        live_api,
        "v2",
        [
            {"call": "is_server_live"},
            {"call": "is_server_ready"},
            {"call": "is_model_ready", "model": "iris"},
            {"call": "is_model_ready", "model": "nope"},
        ],
    )
    assert results == [{"value": True}, {"value": True}, {"value": True}, {"value": False}]


def test_v2_infer_through_the_sdk(
    live_api: str, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    # JSON data, then the binary tensor extension: the SDK puts the raw bytes after the JSON part
    results = kserve_sdk(
        live_api,
        "v2",
        [v2_call("sdk-v2-json", binary=False), v2_call("sdk-v2-binary", binary=True)],
    )
    request_ids = []
    for result, request_id in zip(results, ["sdk-v2-json", "sdk-v2-binary"], strict=True):
        response = result["value"]
        assert (response["id"], response["model_name"]) == (request_id, "iris")
        outputs = response["outputs"]
        assert outputs["label"] == {"datatype": "BYTES", "shape": [3], "data": LABELS}
        probabilities = outputs["probabilities"]
        assert (probabilities["datatype"], probabilities["shape"]) == ("FP64", [3, 3])
        assert [sum(row) for row in probabilities["data"]] == pytest.approx([1.0] * 3)
        assert [row.index(max(row)) for row in probabilities["data"]] == [0, 1, 2]
        request_ids.append(response["parameters"]["request_id"])
    assert served(redis_client, settings) == {rid: expected_rows() for rid in request_ids}


@pytest.mark.parametrize(
    ("protocol", "calls"),
    [
        ("v1", [v1_call({"instances": ROWS}, model="nope"), v1_call({"instances": [ROWS[0][:3]]})]),
        (
            "v2",
            [
                v2_call("sdk-v2-unknown", binary=False, model="nope"),
                v2_call("sdk-v2-narrow", binary=True, width=3),
            ],
        ),
    ],
    ids=["v1", "v2"],
)
def test_errors_through_the_sdk(
    live_api: str,
    redis_client: redis.Redis,
    settings: ApiSettings,
    protocol: str,
    calls: list[dict[str, Any]],
) -> None:
    unknown, narrow = kserve_sdk(live_api, protocol, calls)
    # the SDK quotes the server's `error` member in its exception's message
    assert unknown["error"]["status"] == 404
    assert "no model named 'nope'" in unknown["error"]["message"]
    assert narrow["error"]["status"] == 422
    assert "expected 4 values" in narrow["error"]["message"]
    assert served(redis_client, settings) == {}


# ---- hand-written bodies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/iris:predict", {"instances": ROWS}),
        ("/v1/models/iris:predict", {"instances": OBJECTS}),
        ("/v1/models/iris:predict", {"inputs": ROWS}),
        ("/v1/models/iris:predict", {"inputs": OBJECTS}),
        ("/v1/models/iris:predict", {"inputs": COLUMNS}),
        ("/v1/models/iris:predict", {"signature_name": "serving_default", "instances": ROWS}),
        ("/v1/models/iris/versions/1:predict", {"instances": ROWS}),
    ],
    ids=[
        "instances-lists",
        "instances-objects",
        "inputs-lists",
        "inputs-objects",
        "inputs-columns",
        "signature-name",
        "versioned-path",
    ],
)
def test_predict(
    live_api: str,
    redis_client: redis.Redis,
    settings: ApiSettings,
    path: str,
    body: dict[str, Any],
) -> None:
    response = httpx.post(f"http://{live_api}{path}", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"predictions": LABELS}
    # exactly this request's rows, under the id the response carries
    assert served(redis_client, settings) == {response.headers["x-request-id"]: expected_rows()}


@pytest.mark.parametrize(
    ("path", "content", "content_type", "status", "message"),
    [
        ("iris:predict", {}, None, 422, "exactly one of 'instances' or 'inputs'; found neither"),
        (
            "iris:predict",
            {"instances": ROWS, "inputs": ROWS},
            None,
            422,
            "found 'instances', 'inputs'",
        ),
        ("iris:predict", {"instances": ROWS, "rows": ROWS}, None, 422, "found 'instances', 'rows'"),
        ("iris:predict", [ROWS], None, 422, "must be a JSON object with 'instances' or 'inputs'"),
        ("iris:predict", {"instances": OBJECTS[0]}, None, 422, "instances must be a list of rows"),
        (
            "iris:predict",
            {"inputs": {**COLUMNS, "petal_width": [0.2]}},
            None,
            422,
            "every column of inputs must hold the same number of values",
        ),
        (
            "iris:predict",
            {"inputs": {"sepal_length": 5.1}},
            None,
            422,
            "maps each feature to a list",
        ),
        ("iris:predict", {"instances": [ROWS[0][:3]]}, None, 422, "expected 4 values"),
        ("iris:predict", {"instances": []}, None, 422, "at least one row"),
        (
            "iris:predict",
            {"instances": [{"sepal_length": 5.1}]},
            None,
            422,
            "missing features: sepal_width, petal_length, petal_width",
        ),
        ("iris:predict", b"{", None, 400, "not valid JSON"),
        ("iris:predict", b"5.1,3.5,1.4,0.2\n", "text/csv", 415, "send application/json"),
        ("nope:predict", {"instances": ROWS}, None, 404, "no model named 'nope'"),
        (
            "iris/versions/9:predict",
            {"instances": ROWS},
            None,
            404,
            "no version '9' of model 'iris'",
        ),
    ],
    ids=[
        "neither",
        "both",
        "unknown-key",
        "not-an-object",
        "instances-not-a-list",
        "ragged-columns",
        "column-not-a-list",
        "wrong-row-width",
        "no-rows",
        "missing-feature",
        "not-json",
        "not-json-media-type",
        "unknown-model",
        "unknown-version",
    ],
)
def test_errors_name_the_problem(
    live_api: str,
    redis_client: redis.Redis,
    settings: ApiSettings,
    path: str,
    content: Any,
    content_type: str | None,
    status: int,
    message: str,
) -> None:
    raw = content if isinstance(content, bytes) else json.dumps(content).encode()
    response = httpx.post(
        f"http://{live_api}/v1/models/{path}",
        content=raw,
        headers={"content-type": content_type or "application/json"},
    )
    assert response.status_code == status, response.text
    # exactly application/json: the KServe SDK reads `error` from no other type
    assert response.headers["content-type"] == "application/json"
    problem = response.json()
    assert message in problem["error"]
    assert (problem["status"], problem["detail"]) == (status, problem["error"])
    assert served(redis_client, settings) == {}
