"""The prediction data plane: validate, serve from cache or model, record, answer.

Routes call `PredictionService.predict` and nothing else, so every door into the API goes through
the same validation, cache and ledger path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from berth_api.ledger.gateway import RedisGateway
from berth_api.schemas import ModelRef, PredictResponse, RowPrediction
from berth_api.serving.cache import cache_key
from berth_api.serving.features import rows_from_instances
from berth_api.serving.predictor import ModelOutput
from berth_api.serving.registry import ServedModel
from berth_common.keys import RedisKeys
from berth_common.ledger import PredictionRecord


class PredictionService:
    def __init__(
        self, gateway: RedisGateway, keys: RedisKeys, max_rows: int, max_string_length: int
    ) -> None:
        self._gateway = gateway
        self._keys = keys
        self._max_rows = max_rows
        self._max_string_length = max_string_length

    async def predict(
        self, served: ServedModel, instances: Sequence[Any], request_id: str
    ) -> PredictResponse:
        started = time.perf_counter()
        metadata = served.bundle.metadata
        rows = rows_from_instances(
            metadata, instances, max_rows=self._max_rows, max_string_length=self._max_string_length
        )
        keys = [cache_key(self._keys, metadata.name, metadata.version, row) for row in rows]
        outputs = await self._gateway.cached_outputs(keys)
        cached = [output is not None for output in outputs]
        misses = [i for i, output in enumerate(outputs) if output is None]
        fresh: dict[str, ModelOutput] = {}
        if misses:
            computed = await served.batcher.predict([rows[i] for i in misses])
            for i, output in zip(misses, computed, strict=True):
                outputs[i] = output
                fresh[keys[i]] = output
        final = [output for output in outputs if output is not None]
        latency_ms = (time.perf_counter() - started) * 1000.0
        served_at = datetime.now(UTC)
        names = metadata.feature_names
        records = [
            PredictionRecord(
                request_id=request_id,
                row_index=index,
                model_name=metadata.name,
                model_version=metadata.version,
                features=dict(zip(names, row, strict=True)),
                prediction=output.label,
                probabilities=output.probabilities,
                cached=hit,
                latency_ms=latency_ms,
                served_at=served_at,
            )
            for index, (row, output, hit) in enumerate(zip(rows, final, cached, strict=True))
        ]
        await self._gateway.record(records, fresh)
        return PredictResponse(
            request_id=request_id,
            model=ModelRef(name=metadata.name, version=metadata.version),
            predictions=[
                RowPrediction(label=o.label, probabilities=o.probabilities, cached=hit)
                for o, hit in zip(final, cached, strict=True)
            ],
        )
