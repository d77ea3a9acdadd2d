"""Request and response bodies of the REST API (what /docs shows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from berth_api.bundles.bundle import BundleMetadata, Label

Instance = list[Any] | dict[str, Any]
IRIS_EXAMPLE: Any = [5.1, 3.5, 1.4, 0.2]


class PredictRequest(BaseModel):
    """Rows to predict: `instances` (lists in feature order or objects keyed by feature name)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"instances": [IRIS_EXAMPLE]},
                {
                    "instances": [
                        {
                            "sepal_length": 5.1,
                            "sepal_width": 3.5,
                            "petal_length": 1.4,
                            "petal_width": 0.2,
                        }
                    ]
                },
            ]
        },
    )

    instances: list[Instance] = Field(
        description="One entry per row: values in feature order, or an object keyed by name."
    )


class DefaultPredictRequest(BaseModel):
    """`instances` as for any model, or the single row `features` that Flask tutorials send."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"features": IRIS_EXAMPLE}, {"instances": [IRIS_EXAMPLE]}]},
    )

    instances: list[Instance] | None = None
    features: Instance | None = Field(default=None, description="One row (tutorial form).")

    @model_validator(mode="after")
    def _exactly_one(self) -> DefaultPredictRequest:
        if (self.instances is None) == (self.features is None):
            raise ValueError("send either 'instances' (a list of rows) or 'features' (one row)")
        return self

    def rows(self) -> list[Instance]:
        return self.instances if self.instances is not None else [self.features]  # type: ignore[list-item]


class KServeV1Request(BaseModel):
    """TensorFlow Serving / KServe V1: `instances` (rows), or `inputs` (rows, or an object mapping
    each feature to its column of values)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"instances": [IRIS_EXAMPLE]},
                {
                    "inputs": {
                        "sepal_length": [5.1],
                        "sepal_width": [3.5],
                        "petal_length": [1.4],
                        "petal_width": [0.2],
                    }
                },
            ]
        },
    )

    instances: list[Instance] | None = None
    inputs: list[Instance] | dict[str, list[Any]] | None = None
    signature_name: str | None = Field(default=None, description="Accepted and ignored.")


class PredictionsResponse(BaseModel):
    """MLflow's and TensorFlow Serving's answer: one label (or value) per row."""

    predictions: list[Label]


class ModelRef(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str


class RowPrediction(BaseModel):
    label: Label = Field(description="Predicted class label (or value, for a regressor).")
    probabilities: dict[str, float] | None = Field(
        description="Class -> probability, when the model has predict_proba."
    )
    cached: bool = Field(description="Served from the cache without calling the model.")


class PredictResponse(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    request_id: str
    model: ModelRef
    predictions: list[RowPrediction]


class StoredPrediction(BaseModel):
    """One row of the `predictions` table."""

    model_config = ConfigDict(protected_namespaces=())

    row_index: int
    model: ModelRef
    features: dict[str, Any]
    prediction: Any
    probabilities: dict[str, float] | None
    cached: bool
    latency_ms: float
    served_at: datetime
    stored_at: datetime


class StoredRequest(BaseModel):
    request_id: str
    rows: list[StoredPrediction]


class ModelSummary(BaseModel):
    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: str
    versions: list[str]
    task: str
    estimator: str
    features: list[str]
    classes: list[Label] | None
    default: bool


class Serving(BaseModel):
    """How this API process serves a loaded version."""

    engine: str = Field(description="What computes its rows: onnxruntime or scikit-learn.")
    cache: bool = Field(description="Whether a repeated row is answered from the cache.")
    cache_reason: str = Field(description="Why (CACHE_ENABLED, CACHE_MIN_ROW_US).")
    row_us: float | None = Field(
        description="The model's own microseconds for one row, timed on the bundle's example "
        "row when it was loaded; null when it was not timed."
    )
    batched_row_us: float | None = Field(
        description="Its microseconds per row in a call of BATCH_MAX_SIZE rows; null when not "
        "timed (no example row, or a full batch would take the model more than a second)."
    )


class ModelDetails(BundleMetadata):
    """A bundle's metadata, and that it is served (a model that is not gets a 503 instead)."""

    ready: bool = True
    serving: Serving | None = None

    @classmethod
    def of(cls, metadata: BundleMetadata, serving: Serving | None = None) -> ModelDetails:
        return cls.model_validate({**metadata.model_dump(), "ready": True, "serving": serving})


class ModelList(BaseModel):
    models: list[ModelSummary]


class Check(BaseModel):
    ok: bool
    # Left out for a caller without a key when API_KEYS is set: it can name hosts and files.
    detail: str | None = None


class Readiness(BaseModel):
    status: str
    checks: dict[str, Check]
