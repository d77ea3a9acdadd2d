"""Inputs an adversary sends: each gets a clear 4xx that names the problem, never a 500, never a
blocked process, and nothing is cached or recorded for a request that is not answered 200."""

from __future__ import annotations

import json
import logging
import socket
import struct
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from berth_api.app import create_app
from berth_api.bundles.bundle import read_metadata
from berth_api.protocols.door import DoorRequest, Limits
from berth_api.protocols.v2 import V2Door
from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings
from tests.integration.conftest import serving

ROW = [5.1, 3.5, 1.4, 0.2]
HUGE = "9" * 400  # an integer literal far beyond float range, written out in full
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CUSTOMER = {"tenure_months": 3, "monthly_spend": 80.5, "plan": "basic", "region": "eu"}


def stream_records(client: redis.Redis, settings: ApiSettings) -> list[Any]:
    return [r for _, f in client.xrange(settings.ledger_stream) for r in decode_entry(f)]


def nothing_stored(client: redis.Redis, settings: ApiSettings) -> bool:
    cached = list(client.scan_iter(match=f"{settings.redis_key_prefix}:cache:*"))
    return not client.exists(settings.ledger_stream) and not cached


@pytest.fixture
def churn_settings(settings: ApiSettings, churn_models_dir: Path) -> ApiSettings:
    return settings.model_copy(update={"models_dir": churn_models_dir})


@pytest.fixture
def churn_client(churn_settings: ApiSettings, redis_client: redis.Redis) -> Iterator[TestClient]:
    with TestClient(create_app(churn_settings), raise_server_exceptions=False) as client:
        yield client


# ---- 1. a shape is checked against the limits before anything is built ----------------------


def test_a_v2_shape_of_millions_of_empty_rows_is_refused_before_it_is_built(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    body = {
        "inputs": [{"name": "input-0", "shape": [20_000_000, 0], "datatype": "FP64", "data": []}]
    }
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 422
    problem = response.json()
    assert "more than 1000 rows" in problem["error"]
    assert problem["errors"][0]["field"] == "inputs[0].shape"
    assert nothing_stored(redis_client, settings)


def test_parsing_a_huge_empty_shape_allocates_nothing(iris_models_dir: Path) -> None:
    metadata = read_metadata(iris_models_dir / "iris" / "1")
    body = json.dumps(
        {"inputs": [{"name": "input-0", "shape": [50_000_000, 0], "datatype": "FP64", "data": []}]}
    ).encode()
    tracemalloc.start()
    try:
        with pytest.raises(Exception, match="rows"):
            V2Door().parse(DoorRequest(body, "application/json"), metadata, Limits(max_rows=1000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated to refuse an 80-byte body"


# ---- 2. what answered 500 --------------------------------------------------------------------

V1_HUGE = f'{{"instances": [[{HUGE}, 3.5, 1.4, 0.2]]}}'.encode()
HUGE_BODIES = [
    ("/predict", f'{{"features": [{HUGE}, 3.5, 1.4, 0.2]}}'.encode()),
    ("/v1/models/iris/predict", V1_HUGE),
    ("/v1/models/iris/versions/1/predict", V1_HUGE),
    ("/v1/models/iris:predict", V1_HUGE),
    (
        "/v2/models/iris/infer",
        (
            '{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", '
            f'"data": [{HUGE}, 3.5, 1.4, 0.2]}}]}}'
        ).encode(),
    ),
    ("/invocations", f'{{"dataframe_split": {{"data": [[{HUGE}, 3.5, 1.4, 0.2]]}}}}'.encode()),
]


@pytest.mark.parametrize(("path", "body"), HUGE_BODIES, ids=[p for p, _ in HUGE_BODIES])
def test_a_number_beyond_float_range_is_a_422_at_every_door(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings, path: str, body: bytes
) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "sepal_length" in response.json()["detail"]
    assert "out of range" in response.json()["detail"]
    assert nothing_stored(redis_client, settings)


DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"instances": ' + DEEP + b"}"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/invocations", DEEP),
        ("/invocations", b'{"instances": ' + DEEP + b"}"),
        ("/predict", DEEP_OBJECT),
        ("/v1/models/iris:predict", DEEP_OBJECT),
        ("/v2/models/iris/infer", b'{"inputs": ' + DEEP + b"}"),
    ],
    ids=["mlflow", "mlflow-object", "rest", "kserve-v1", "v2"],
)
def test_deeply_nested_json_is_a_400(client: TestClient, path: str, body: bytes) -> None:
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["status"] == 400


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/models/churn/predict",
            b'{"instances": [{"tenure_months": 3, "monthly_spend": 80.5, '
            b'"plan": "\\ud800", "region": "eu"}]}',
        ),
        ("/v1/models/churn/predict", b'{"instances": [{"\\udfff": 1}]}'),
        (
            "/v2/models/churn/infer",
            b'{"id": "\\ud800", "inputs": [{"name": "plan", "shape": [1], "datatype": "BYTES", '
            b'"data": ["\\ud800"]}]}',
        ),
        (
            "/invocations",
            b'{"dataframe_records": [{"sepal_length": "\\ud800x"}]}',
        ),
    ],
    ids=["feature", "key", "v2", "mlflow"],
)
def test_a_lone_surrogate_is_a_4xx_that_says_so(
    churn_client: TestClient,
    redis_client: redis.Redis,
    churn_settings: ApiSettings,
    path: str,
    body: bytes,
) -> None:
    response = churn_client.post(path, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert "surrogate" in response.json()["detail"] or "JSON" in response.json()["detail"]
    assert nothing_stored(redis_client, churn_settings)


@pytest.mark.parametrize("length", [b"\xb2", b"\xb9\xb2", b"-1", b"1e3", b"0x1", b""])
def test_a_binary_header_length_that_is_not_a_plain_count_is_a_400(
    live_api: str, length: bytes
) -> None:
    body = b'{"inputs": []}'
    with socket.create_connection(tuple(live_api.split(":"))) as connection:  # type: ignore[arg-type]
        connection.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Inference-Header-Content-Length: " + length + b"\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
        )
        answer = _read_all(connection)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"inference-header-content-length must be a byte count" in answer


def test_an_unexpected_error_is_a_500_with_the_request_id_logged_once(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    class Exploding:
        engine = "exploding"

        def predict(self, rows: list[list[Any]]) -> list[Any]:
            raise RuntimeError("a bug in the serving path")

    state = client.app_state["berth"]  # type: ignore[attr-defined]
    state.registry.models[("iris", "1")].batcher.predictor = Exploding()
    with caplog.at_level(logging.ERROR):
        response = client.post(
            "/predict", json={"features": ROW}, headers={"X-Request-ID": "boom-1"}
        )
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "boom-1"
    assert response.json()["request_id"] == "boom-1"
    assert "RuntimeError" not in response.text  # the client learns the id, not the internals
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert len(tracebacks) == 1, [r.getMessage() for r in tracebacks]
    assert "a bug in the serving path" in caplog.text


# ---- 3. binary tensors are taken as the numbers they are, or refused -------------------------


def binary_request(inputs: list[tuple[str, str, list[int], bytes]]) -> tuple[bytes, str]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "datatype": datatype,
                    "shape": shape,
                    "parameters": {"binary_data_size": len(blob)},
                }
                for name, datatype, shape, blob in inputs
            ]
        }
    ).encode()
    return header + b"".join(blob for *_, blob in inputs), str(len(header))


def test_uint64_is_the_number_it_is(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    largest = 2**64 - 1
    inputs = [("sepal_length", "UINT64", [1], struct.pack("<Q", largest))]
    inputs += [(name, "FP64", [1], struct.pack("<d", 1.0)) for name in FEATURES[1:]]
    body, length = binary_request(inputs)
    response = client.post(
        "/v2/models/iris/infer", content=body, headers={"inference-header-content-length": length}
    )
    assert response.status_code == 200, response.text
    [record] = stream_records(redis_client, settings)
    assert record.features["sepal_length"] == float(largest)


def test_bytes_whose_length_overruns_the_data_are_a_422(
    churn_client: TestClient, redis_client: redis.Redis, churn_settings: ApiSettings
) -> None:
    numbers = [
        ("tenure_months", "FP64", [1], struct.pack("<d", 3.0)),
        ("monthly_spend", "FP64", [1], struct.pack("<d", 80.5)),
        ("region", "BYTES", [1], struct.pack("<I", 2) + b"eu"),
    ]
    overrun = ("plan", "BYTES", [1], struct.pack("<I", 50) + b"basic")
    body, length = binary_request([*numbers, overrun])
    response = churn_client.post(
        "/v2/models/churn/infer", content=body, headers={"inference-header-content-length": length}
    )
    assert response.status_code == 422, response.text
    assert "claims 50 bytes, 5 remain" in response.json()["error"]
    assert nothing_stored(redis_client, churn_settings)

    not_utf8 = ("plan", "BYTES", [1], struct.pack("<I", 2) + b"\xff\xfe")
    body, length = binary_request([*numbers, not_utf8])
    response = churn_client.post(
        "/v2/models/churn/infer", content=body, headers={"inference-header-content-length": length}
    )
    assert response.status_code == 422
    assert "not UTF-8" in response.json()["error"]


@pytest.mark.parametrize(
    ("datatype", "data", "holds"),
    [
        ("BOOL", [1.5, 0.0, 1.0, 0.0], "true or false"),
        ("BOOL", [1, 0, 1, 0], "true or false"),
        ("UINT8", [300, 1, 1, 1], "integers from 0 to 255"),
        ("INT32", [1.5, 1, 1, 1], "integers"),
        ("INT64", [-1, 2**63, 1, 1], "integers"),
        ("FP64", [True, 1.0, 1.0, 1.0], "numbers"),
        ("BYTES", [1, 2, 3, 4], "strings"),
    ],
)
def test_json_tensor_values_must_be_what_their_datatype_holds(
    client: TestClient,
    redis_client: redis.Redis,
    settings: ApiSettings,
    datatype: str,
    data: list[Any],
    holds: str,
) -> None:
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": datatype, "data": data}]}
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 422, response.text
    assert f"datatype {datatype} holds {holds}" in response.json()["error"]
    assert nothing_stored(redis_client, settings)


def test_binary_bool_bytes_must_be_zero_or_one(client: TestClient) -> None:
    body, length = binary_request([("input-0", "BOOL", [1, 4], bytes([1, 0, 2, 1]))])
    response = client.post(
        "/v2/models/iris/infer", content=body, headers={"inference-header-content-length": length}
    )
    assert response.status_code == 422
    assert "BOOL element is one byte, 0 or 1" in response.json()["error"]


# ---- 4. nothing is stored for a request that is not answered 200 -----------------------------


def test_an_unknown_requested_output_stores_nothing(
    client: TestClient, redis_client: redis.Redis, settings: ApiSettings
) -> None:
    body = {
        "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}],
        "outputs": [{"name": "label"}, {"name": "nope"}],
    }
    response = client.post("/v2/models/iris/infer", json=body)
    assert response.status_code == 422
    assert "unknown outputs requested: 'nope'" in response.json()["error"]
    assert nothing_stored(redis_client, settings)


# ---- 5. a client that never finishes its request does not hold a connection ------------------


@pytest.fixture
def impatient(settings: ApiSettings) -> Iterator[str]:
    quick = settings.model_copy(
        update={"request_header_timeout_seconds": 0.5, "request_body_timeout_seconds": 0.5}
    )
    with serving(quick) as address:
        yield address


def _connect(address: str) -> socket.socket:
    host, port = address.split(":")
    connection = socket.create_connection((host, int(port)))
    connection.settimeout(5)
    return connection


def _read_all(connection: socket.socket) -> bytes:
    chunks = []
    while chunk := connection.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize(
    "sent",
    [
        b"",
        b"POST /predict HTTP/1.1\r\nHost: x\r\n",
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"features": ',
    ],
    ids=["nothing", "half-the-headers", "half-the-body"],
)
def test_a_stalled_request_is_answered_408_and_closed(impatient: str, sent: bytes) -> None:
    with _connect(impatient) as connection:
        connection.sendall(sent)
        started = time.monotonic()
        answer = _read_all(connection)  # returns when the server closes the connection
    assert time.monotonic() - started < 4
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"did not arrive within 0.5 s" in answer


def test_hundreds_of_stalled_connections_do_not_stop_the_api(impatient: str) -> None:
    stalled = [_connect(impatient) for _ in range(300)]
    try:
        for connection in stalled:
            connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
        response = httpx.post(f"http://{impatient}/predict", json={"features": ROW}, timeout=5)
        assert response.status_code == 200
        for connection in stalled:  # every one is closed by the server, none left held
            assert _read_all(connection).startswith(b"HTTP/1.1 408")
    finally:
        for connection in stalled:
            connection.close()


def test_a_kept_alive_connection_gets_a_fresh_deadline_per_request(impatient: str) -> None:
    with httpx.Client(base_url=f"http://{impatient}") as session:
        for _ in range(3):
            assert session.post("/predict", json={"features": ROW}).status_code == 200
            time.sleep(0.3)  # idle between requests, well within keep-alive


# ---- 6. nothing a client sends can forge a log line ------------------------------------------


def test_the_access_log_escapes_control_characters(
    settings: ApiSettings, redis_client: redis.Redis, capfd: pytest.CaptureFixture[str]
) -> None:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.get("/healthz%0AFORGED%20LINE%0D%1B[31m").status_code == 404
    lines = capfd.readouterr().err.splitlines()
    assert not [line for line in lines if line.startswith("FORGED")]
    access = [line for line in lines if "berth.access" in line and "/healthz" in line]
    assert len(access) == 1
    assert "/healthz\\x0aFORGED LINE\\x0d\\x1b[31m 404" in access[0]


# ---- 7. HTTP/1.0 clients get a Content-Length ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", json.dumps({"features": ROW})),
        ("/v1/models/iris:predict", json.dumps({"instances": [ROW]})),
        (
            "/v2/models/iris/infer",
            json.dumps(
                {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
            ),
        ),
        ("/predict", json.dumps({"features": [1]})),  # an error, too
    ],
)
def test_http_1_0_answers_carry_a_content_length(live_api: str, path: str, body: str) -> None:
    with _connect(live_api) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.0\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}".encode()
        )
        answer = _read_all(connection)
    head, _, content = answer.partition(b"\r\n\r\n")
    headers = {
        line.split(b":", 1)[0].lower(): line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")[1:]
    }
    assert b"transfer-encoding" not in headers
    assert int(headers[b"content-length"]) == len(content)
    json.loads(content)


# ---- 8. MLflow clients read MLflow's error codes ---------------------------------------------


def test_invocations_415_is_a_bad_request_in_mlflow_terms(client: TestClient) -> None:
    response = client.post("/invocations", content=b"x", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert "text/plain" in response.json()["message"]


# ---- the same model, called as its V2 metadata says -----------------------------------------


def _tensor_for(spec: dict[str, Any], rows: int, rng: np.random.Generator) -> dict[str, Any]:
    """What a generic V2 client builds from one input's metadata: its datatype, its shape with
    -1 as the batch size, values of that type."""
    shape = [rows if d == -1 else d for d in spec["shape"]]
    count = int(np.prod(shape))
    values: list[Any]
    if spec["datatype"] == "BYTES":
        values = ["basic"] * count
    elif spec["datatype"] == "BOOL":
        values = [True] * count
    elif spec["datatype"].startswith(("INT", "UINT")):
        values = rng.integers(1, 10, count).tolist()
    else:
        values = rng.uniform(1, 5, count).round(2).tolist()
    return {"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": values}


@pytest.mark.parametrize("model", ["iris", "churn"])
def test_a_client_that_follows_the_metadata_alone_succeeds(
    churn_client: TestClient, model: str
) -> None:
    metadata = churn_client.get(f"/v2/models/{model}").json()
    rng = np.random.default_rng(0)
    body = {"inputs": [_tensor_for(spec, 3, rng) for spec in metadata["inputs"]]}
    response = churn_client.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, (metadata["inputs"], response.text)
    assert response.json()["outputs"][0]["shape"] == [3]


@pytest.mark.parametrize(
    ("path", "body"),
    [("/invocations", {"inputs": {}}), ("/v1/models/iris:predict", {"inputs": {}})],
)
def test_an_empty_columnar_body_is_a_422(client: TestClient, path: str, body: Any) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert "maps each feature to a list of values" in response.json()["detail"]
