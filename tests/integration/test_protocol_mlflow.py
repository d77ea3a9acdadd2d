"""MLflow / SageMaker scoring protocol: every input format MLflow's scoring server accepts."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient

from berth_common.ledger import decode_entry
from berth_common.settings import ApiSettings

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


def test_ping(client: TestClient) -> None:
    response = client.get("/ping")
    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"dataframe_split": {"columns": COLUMNS, "data": [SETOSA, VIRGINICA]}},
        {"dataframe_split": {"columns": COLUMNS, "index": [7, 8], "data": [SETOSA, VIRGINICA]}},
        {"dataframe_split": {"data": [SETOSA, VIRGINICA]}},
        {
            "dataframe_records": [
                dict(zip(COLUMNS, SETOSA, strict=True)),
                dict(zip(COLUMNS, VIRGINICA, strict=True)),
            ]
        },
        {"instances": [SETOSA, VIRGINICA]},
        {"inputs": [SETOSA, VIRGINICA]},
        {"inputs": {name: [a, b] for name, a, b in zip(COLUMNS, SETOSA, VIRGINICA, strict=True)}},
        {"instances": [SETOSA, VIRGINICA], "params": {"ignored": True}},
    ],
    ids=[
        "split",
        "split-index",
        "split-no-columns",
        "records",
        "instances",
        "inputs-rows",
        "inputs-columns",
        "params",
    ],
)
def test_json_formats(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/invocations", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": ["setosa", "virginica"]}


def test_csv(client: TestClient, redis_client: redis.Redis, settings: ApiSettings) -> None:
    body = (
        ",".join(COLUMNS)
        + "\n"
        + ",".join(map(str, SETOSA))
        + "\n"
        + ",".join(map(str, VIRGINICA))
        + "\n"
    )
    response = client.post(
        "/invocations", content=body, headers={"content-type": "text/csv", "X-Request-ID": "csv-1"}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": ["setosa", "virginica"]}
    # every door leads to the ledger
    entries = redis_client.xrange(settings.ledger_stream)
    assert len(entries) == 1
    records = decode_entry(entries[0][1])
    assert [(r.request_id, r.row_index, r.prediction) for r in records] == [
        ("csv-1", 0, "setosa"),
        ("csv-1", 1, "virginica"),
    ]
    assert records[1].features == dict(zip(COLUMNS, VIRGINICA, strict=True))


def test_csv_columns_in_another_order(client: TestClient) -> None:
    body = "petal_width,petal_length,sepal_width,sepal_length\n0.2,1.4,3.5,5.1\n"
    response = client.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert response.json() == {"predictions": ["setosa"]}


@pytest.mark.parametrize(
    ("content", "content_type", "status", "message"),
    [
        (b"{", "application/json", 400, "not valid JSON"),
        (b'{"instances": [[1, 2]]}', "application/json", 422, "expected 4 values"),
        (b'{"instances": [], "inputs": []}', "application/json", 422, "exactly one of"),
        (b'{"rows": []}', "application/json", 422, "exactly one of"),
        (b"[1, 2]", "application/json", 422, "must be a JSON object"),
        (
            b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}',
            "application/json",
            422,
            "one value per column",
        ),
        (
            b'{"dataframe_records": [{"sepal_length": 1}]}',
            "application/json",
            422,
            "missing features",
        ),
        (
            b'{"inputs": {"sepal_length": [1, 2], "sepal_width": [1]}}',
            "application/json",
            422,
            "same number of values",
        ),
        (
            b"sepal_length,sepal_width,petal_length,petal_width\n1,2,x,4\n",
            "text/csv",
            422,
            "petal_length must be a number",
        ),
        (b"sepal_length,sepal_width\n1,2\n", "text/csv", 422, "missing features"),
        (b"a,b\n1\n", "text/csv", 422, "has 1 fields, the header has 2"),
        (b"", "text/csv", 422, "empty"),
        (b"\xff\xfe", "text/csv", 400, "not UTF-8"),
        (b"<xml/>", "application/xml", 415, "not supported"),
    ],
)
def test_bad_bodies(
    client: TestClient, content: bytes, content_type: str, status: int, message: str
) -> None:
    response = client.post("/invocations", content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    problem = response.json()
    assert message in problem["detail"]
    assert problem["message"] == problem["detail"]
    assert problem["error_code"]
