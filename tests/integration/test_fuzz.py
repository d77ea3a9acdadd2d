"""Fuzzing the API from its own OpenAPI document: no 5xx, nothing that breaks the document."""

from __future__ import annotations

import os

import httpx

from tests.fuzz import run_schemathesis

EXAMPLES = int(os.environ.get("BERTH_FUZZ_EXAMPLES", "20"))


def test_api_conforms_to_its_document(live_api: str) -> None:
    run = run_schemathesis(f"http://{live_api}", examples=EXAMPLES)
    print(f"schemathesis: {run.cases} cases")
    print(run.output[-3000:])
    assert run.returncode == 0, run.output[-6000:]
    assert run.cases > 100
    assert httpx.get(f"http://{live_api}/healthz").status_code == 200
