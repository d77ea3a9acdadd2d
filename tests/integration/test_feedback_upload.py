"""`make feedback FILE=...`: the uploader sends a file larger than MAX_BODY_BYTES in parts to a
live API with its key, and reports every refused line by its number in the file."""

from __future__ import annotations

import io
import json
import sys

import httpx
import pytest
import redis
from pydantic import SecretStr
from sqlalchemy import Engine, text

from berth_api.ledger.feedback_upload import csv_parts, jsonl_parts, main, upload
from berth_common.settings import ApiSettings, WorkerSettings
from berth_worker.consumer import LedgerConsumer
from berth_worker.writer import LedgerWriter
from tests.integration.conftest import serving

KEY = "uploader-key-1"
LIMIT = 1600
ROWS = 120


@pytest.fixture
def small(settings: ApiSettings) -> ApiSettings:
    return settings.model_copy(
        update={"max_body_bytes": LIMIT, "api_keys": SecretStr(f"{KEY},other-key")}
    )


def served(
    address: str, worker_settings: WorkerSettings, client: redis.Redis, engine: Engine
) -> None:
    with httpx.Client(
        base_url=f"http://{address}", headers={"Authorization": f"Bearer {KEY}"}
    ) as api:
        for n in range(ROWS):
            response = api.post(
                "/predict",
                json={"features": [5.1, 3.5, 1.4, 0.2]},
                headers={"X-Request-ID": f"u-{n}"},
            )
            assert response.status_code == 200, response.text
    LedgerConsumer(worker_settings, client, LedgerWriter(engine, max_deliveries=2)).run(
        until_idle=True
    )


def test_a_csv_file_larger_than_a_body_goes_in_parts(
    small: ApiSettings,
    redis_client: redis.Redis,
    worker_settings: WorkerSettings,
    engine: Engine,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = ["request_id,row_index,actual"]
    lines += [f"u-{n},0,setosa" for n in range(ROWS)]
    lines[10] = "u-9,0,tulip"  # line 11
    lines.insert(30, 'u-x,0,"two\nlines"')  # lines 31-32: an unknown request
    data = ("\n".join(lines) + "\n").encode()
    assert len(csv_parts(data, LIMIT)) > 2
    with serving(small) as address:
        served(address, worker_settings, redis_client, engine)
        for key, value in {
            "POSTGRES_HOST": small.postgres_host,
            "POSTGRES_PASSWORD": small.postgres_password.get_secret_value(),
            "REDIS_PASSWORD": small.redis_password.get_secret_value(),
            "API_KEYS": small.api_keys.get_secret_value(),
            "MAX_BODY_BYTES": str(LIMIT),
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
        status = main(["--format", "csv", "--url", f"http://{address}"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert f"{ROWS + 1:,} lines read, {ROWS - 1} accepted" in out
    assert "2 rejected" in out
    assert "line 11: actual: the actual is not one of the model's classes" in out
    assert "line 32: request_id: no prediction was stored for it" in out
    LedgerConsumer(worker_settings, redis_client, LedgerWriter(engine, max_deliveries=2)).run(
        until_idle=True
    )
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM feedback WHERE source = 'bulk'"))
        assert count.scalar_one() == ROWS - 1


def test_json_lines_in_parts_and_a_part_with_nothing_to_accept(
    small: ApiSettings, redis_client: redis.Redis, worker_settings: WorkerSettings, engine: Engine
) -> None:
    lines = [
        json.dumps({"request_id": f"u-{n}", "row_index": 0, "actual": "setosa"})
        for n in range(ROWS)
    ]
    bad = [json.dumps({"request_id": "u-1", "row_index": 5, "actual": "setosa"})] * 40
    data = ("\n".join([*lines, "", *bad]) + "\n").encode()
    parts = jsonl_parts(data, LIMIT)
    assert len(parts) > 2
    with serving(small) as address:
        served(address, worker_settings, redis_client, engine)
        summary = upload(parts, f"http://{address}", "application/x-ndjson", KEY)
        unauthorised = upload(parts[:1], f"http://{address}", "application/x-ndjson", None)
    assert summary.failures == []
    assert (summary.lines, summary.accepted, summary.rejected) == (ROWS + 40, ROWS, 40)
    # every refused line is named by its number in the file, the later ones "already given"
    assert summary.problems[0][:2] == (ROWS + 2, "row_index")
    assert "out of range" in summary.problems[0][2]
    assert summary.problems[-1][0] == ROWS + 41
    assert unauthorised.failures
    assert "HTTP 401" in unauthorised.failures[0]
