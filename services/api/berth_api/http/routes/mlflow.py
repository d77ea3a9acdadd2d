"""MLflow / SageMaker scoring endpoints for the default model; see protocols/mlflow.py."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from berth_api.http.auth import require_api_key
from berth_api.http.deps import RequestId, State
from berth_api.protocols import mlflow

router = APIRouter(tags=["mlflow / sagemaker"])
INVOCATIONS_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object"},
                "examples": {
                    "dataframe_split": {
                        "value": {
                            "dataframe_split": {
                                "columns": [
                                    "sepal_length",
                                    "sepal_width",
                                    "petal_length",
                                    "petal_width",
                                ],
                                "data": [[5.1, 3.5, 1.4, 0.2]],
                            }
                        }
                    },
                    "dataframe_records": {
                        "value": {
                            "dataframe_records": [
                                {
                                    "sepal_length": 5.1,
                                    "sepal_width": 3.5,
                                    "petal_length": 1.4,
                                    "petal_width": 0.2,
                                }
                            ]
                        }
                    },
                    "instances": {"value": {"instances": [[5.1, 3.5, 1.4, 0.2]]}},
                    "inputs": {
                        "value": {
                            "inputs": {
                                "sepal_length": [5.1],
                                "sepal_width": [3.5],
                                "petal_length": [1.4],
                                "petal_width": [0.2],
                            }
                        }
                    },
                },
            },
            "text/csv": {
                "schema": {"type": "string"},
                "example": "sepal_length,sepal_width,petal_length,petal_width\n5.1,3.5,1.4,0.2\n",
            },
        },
    }
}


@router.get("/ping", response_class=PlainTextResponse)
async def ping(state: State) -> PlainTextResponse:
    """SageMaker's health check: 200 once the default model is loaded."""
    ok, detail = state.registry.default_ready()
    return PlainTextResponse("\n" if ok else f"{detail}\n", status_code=200 if ok else 503)


@router.post(
    "/invocations",
    dependencies=[Depends(require_api_key)],
    openapi_extra=INVOCATIONS_BODY,
    responses={
        400: {"description": "Malformed body"},
        415: {"description": "Neither JSON nor CSV"},
        422: {"description": "Invalid rows"},
    },
)
async def invocations(
    request: Request, state: State, request_id: RequestId
) -> dict[str, list[object]]:
    """Scores rows with the default model: MLflow's JSON formats or CSV with a header row."""
    served = state.registry.default()
    instances = mlflow.instances_from_body(
        served.bundle.metadata, await request.body(), request.headers.get("content-type", "")
    )
    prediction = await state.service.predict(served, instances, request_id)
    return mlflow.response_body(prediction)
