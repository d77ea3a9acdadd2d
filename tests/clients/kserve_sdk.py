"""Calls a running Berth through the KServe Python SDK's REST client, as KServe users do.

    BERTH_KSERVE_PYTHON -I tests/clients/kserve_sdk.py BASE_URL PROTOCOL < calls.json

Run with the interpreter of the SDK's own environment (requirements/kserve-client.txt says why it
is not Berth's), so this program imports nothing of the project. PROTOCOL is `v1` or `v2`. The
calls on standard input are a JSON list; each is one of

    {"call": "is_server_live"}
    {"call": "is_server_ready"}                                     (v2 only)
    {"call": "is_model_ready", "model": "iris"}
    {"call": "infer", "model": "iris", "body": {...}}               (v1: the body as sent)
    {"call": "infer", "model": "iris", "id": "...", "binary": true,
     "inputs": [{"name": "input-0", "datatype": "FP64", "data": [[...], ...]}]}   (v2)

and any of them may carry "headers". Standard output is one JSON list, a result per call:
`{"value": ...}`, or `{"error": {"status": ..., "message": ...}}` when the server answered with an
error status, the message being the SDK's own (which quotes the server's `error` member).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, InferResponse, RESTConfig
from kserve.utils.numpy_codec import to_np_dtype

Call = dict[str, Any]


async def run(base_url: str, protocol: str, calls: list[Call]) -> list[dict[str, Any]]:
    config = RESTConfig(protocol=protocol, retries=0, timeout=30)
    results = []
    async with InferenceRESTClient(config) as client:
        for call in calls:
            try:
                value = await perform(client, base_url, protocol, call)
            except httpx.HTTPStatusError as exc:
                results.append({"error": {"status": exc.response.status_code, "message": str(exc)}})
            else:
                results.append({"value": value})
    return results


async def perform(client: InferenceRESTClient, base_url: str, protocol: str, call: Call) -> Any:
    headers = call.get("headers")
    match call["call"]:
        case "is_server_live":
            return await client.is_server_live(base_url, headers=headers)
        case "is_server_ready":
            return await client.is_server_ready(base_url, headers=headers)
        case "is_model_ready":
            return await client.is_model_ready(base_url, call["model"], headers=headers)
        case "infer" if protocol == "v1":
            # V1 has no typed request in the SDK: a dict is sent as JSON, the answer is a dict
            return await client.infer(base_url, call["body"], call["model"], headers=headers)
        case "infer":
            request = v2_request(call)
            response = await client.infer(base_url, request, call["model"], headers=headers)
            return v2_response(response)
    raise ValueError(f"unknown call {call['call']!r} for protocol {protocol}")


def v2_request(call: Call) -> Any:
    """An InferRequest whose tensors are set from numpy, as JSON data or, with `binary`, as
    the binary tensor extension (raw bytes after the JSON part, which `to_rest()` appends)."""
    inputs = []
    for spec in call["inputs"]:
        array = np.asarray(spec["data"], dtype=to_np_dtype(spec["datatype"]))
        tensor = InferInput(spec["name"], list(array.shape), spec["datatype"])
        tensor.set_data_from_numpy(array, binary_data=call.get("binary", False))
        inputs.append(tensor)
    return InferRequest(call["model"], inputs, request_id=call.get("id"))


def v2_response(response: InferResponse) -> dict[str, Any]:
    return {
        "id": response.id,
        "model_name": response.model_name,
        "parameters": response.parameters,
        "outputs": {
            output.name: {
                "datatype": output.datatype,
                "shape": list(output.shape),
                "data": output.as_numpy().tolist(),
            }
            for output in response.outputs
        },
    }


def main() -> None:
    base_url, protocol = sys.argv[1:]
    results = asyncio.run(run(base_url, protocol, json.load(sys.stdin)))
    sys.stdout.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()
