# BentoML's documented way to serve a scikit-learn model with adaptive batching: a new-style
# service class whose batchable API gets the rows of many requests stacked into one array.
import os
from typing import Annotated

import bentoml
import joblib
import numpy as np
from bentoml.validators import DType, Shape

# Shape reshapes as well as checks, so a bare row [4 floats] is taken as one row too: the body
# Berth and the Flask baseline are driven with works here unchanged.
Rows = Annotated[np.ndarray, Shape((-1, 4)), DType("float64")]


# Read at import, which happens in the serving process and in every worker alike, so that
# `make bench` can try 1 and 2 workers with one image.
@bentoml.service(
    workers=int(os.environ.get("BENTOML_WORKERS", "1")),
    # Off as in the other baselines: no per-request access log, no Prometheus bookkeeping.
    logging={"access": {"enabled": False}},
    metrics={"enabled": False},
)
class IrisClassifier:
    def __init__(self) -> None:
        self.model = joblib.load(os.environ.get("MODEL_PATH", "/models/iris/1/model.joblib"))

    # max_batch_size as MLServer's iris-batched. max_latency_ms is not MLServer's max_batch_time:
    # BentoML learns its batch window itself, and this is a deadline past which queued requests
    # get a 503. At 5 ms, queueing under load would turn into errors; 1000 is the docs' value.
    @bentoml.api(batchable=True, batch_dim=0, max_batch_size=32, max_latency_ms=1000)
    def predict(self, features: Rows) -> np.ndarray:
        return self.model.predict(features)
