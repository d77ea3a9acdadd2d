"""Open Inference Protocol (V2) through Triton's own HTTP client, and as raw JSON."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings

ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float64)
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture
def client(live_api: str) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=live_api)


def test_health_and_metadata_through_the_triton_client(
    client: triton.InferenceServerClient,
) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "1")
    assert not client.is_model_ready("nope")
    metadata = client.get_model_metadata("iris")
    assert metadata["name"] == "iris"
    assert metadata["versions"] == ["1"]
    # one way to call it: the matrix, for a model whose features are all floats
    assert metadata["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in metadata["outputs"]] == ["label", "probabilities"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_one_2d_input(
    client: triton.InferenceServerClient,
    redis_client: redis.Redis,
    api_settings: ApiSettings,
    binary: bool,
) -> None:
    tensor = triton.InferInput("input-0", list(ROWS.shape), "FP64")
    tensor.set_data_from_numpy(ROWS, binary_data=binary)
    result = client.infer("iris", [tensor], request_id="v2-req-1")
    labels = result.as_numpy("label")
    assert [str(label) for label in labels] == ["setosa", "virginica"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 3)
    assert probabilities.sum(axis=1) == pytest.approx([1.0, 1.0])
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "iris",
        "1",
        "v2-req-1",
    )

    # the same door into the ledger as every other protocol
    entries = redis_client.xrange(api_settings.ledger_stream)
    records = [r for _, fields in entries for r in decode_entry(fields)]
    assert [r.prediction for r in records] == ["setosa", "virginica"]
    assert records[0].request_id == response["parameters"]["request_id"]


def test_one_input_per_feature_and_a_chosen_output(client: triton.InferenceServerClient) -> None:
    inputs = []
    for i, name in enumerate(FEATURES):
        tensor = triton.InferInput(name, [2], "FP64")
        tensor.set_data_from_numpy(ROWS[:, i].copy())
        inputs.append(tensor)
    result = client.infer(
        "iris", inputs, model_version="1", outputs=[triton.InferRequestedOutput("probabilities")]
    )
    assert result.as_numpy("label") is None
    assert result.as_numpy("probabilities").argmax(axis=1).tolist() == [0, 2]


def test_binary_int_and_bytes_tensors_per_feature(live_api: str) -> None:
    # a mixed model is not needed to check the decoding: FP32 and INT64 blobs per feature
    client = triton.InferenceServerClient(url=live_api)
    inputs = []
    for i, name in enumerate(FEATURES):
        dtype, datatype = (np.float32, "FP32") if i % 2 else (np.int64, "INT64")
        tensor = triton.InferInput(name, [2], datatype)
        tensor.set_data_from_numpy(
            np.rint(ROWS[:, i]).astype(dtype) if dtype is np.int64 else ROWS[:, i].astype(dtype)
        )
        inputs.append(tensor)
    result = client.infer("iris", inputs)
    assert result.as_numpy("probabilities").shape == (2, 3)


def test_truncated_binary_body_is_a_400(live_api: str) -> None:
    tensor = {"name": "input-0", "shape": [1, 4], "datatype": "FP64"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 32}}]}).encode()
    response = httpx.post(
        f"http://{live_api}/v2/models/iris/infer",
        content=header + b"\0" * 16,
        headers={"inference-header-content-length": str(len(header))},
    )
    assert response.status_code == 400
    assert "binary_data_size does not fit" in response.json()["error"]


def test_errors_in_v2_shape(client: triton.InferenceServerClient) -> None:
    tensor = triton.InferInput("input-0", [1, 3], "FP64")
    tensor.set_data_from_numpy(ROWS[:1, :3].copy())
    with pytest.raises(InferenceServerException, match="expected 4 values"):
        client.infer("iris", [tensor])
    with pytest.raises(InferenceServerException, match="no model named 'nope'"):
        client.infer("nope", [tensor])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3]}
                ]
            },
            422,
            "shape [1, 4] needs 4 values",
        ),
        (
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ["a", 2, 3, 4]}
                ]
            },
            422,
            "holds numbers, not strings",
        ),
        (
            {
                "inputs": [
                    {"name": "sepal_length", "shape": [1], "datatype": "FP64", "data": [1]},
                    {"name": "bogus", "shape": [1], "datatype": "FP64", "data": [1]},
                ]
            },
            422,
            "unknown feature names: 'bogus'",
        ),
        (
            {
                "inputs": [
                    {"name": "sepal_length", "shape": [2], "datatype": "FP64", "data": [1, 2]},
                    {"name": "sepal_width", "shape": [1], "datatype": "FP64", "data": [1]},
                ]
            },
            422,
            "same number of rows",
        ),
        ({"inputs": []}, 422, "inputs"),
        (
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP128", "data": [1, 2, 3, 4]}
                ]
            },
            422,
            "datatype",
        ),
        (
            {
                "inputs": [
                    {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}
                ],
                "outputs": [{"name": "nope"}],
            },
            422,
            "unknown outputs requested",
        ),
    ],
)
def test_bad_tensors_are_named(
    live_api: str, body: dict[str, Any], status: int, message: str
) -> None:
    response = httpx.post(f"http://{live_api}/v2/models/iris/infer", json=body)
    assert response.status_code == status
    problem = response.json()
    assert message in problem["error"] or message in str(problem.get("errors"))
    assert problem["status"] == status


def test_nested_data_and_bytes_labels(live_api: str) -> None:
    body = {
        "inputs": [
            {
                "name": "input-0",
                "shape": [2, 4],
                "datatype": "FP32",
                "data": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]],
            }
        ]
    }
    response = httpx.post(f"http://{live_api}/v2/models/iris/versions/1/infer", json=body)
    assert response.status_code == 200
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["label"] == {
        "name": "label",
        "shape": [2],
        "datatype": "BYTES",
        "data": ["setosa", "virginica"],
    }
    assert outputs["probabilities"]["shape"] == [2, 3]
    assert len(outputs["probabilities"]["data"]) == 6
