"""One model's calls, continuously batched and run in the model's own thread.

Requests that arrive while the model is busy share its next call (see `coalesce`), so a model
that costs the same for one row as for sixty-four serves sixty-four times the requests. One bad
request cannot fail the others it was batched with: when the model refuses a combined call, each
request is run on its own and only the one at fault gets the error.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from berth_api.coalesce import Coalescer
from berth_api.errors import UnpredictableInput
from berth_api.monitoring import ApiMetrics
from berth_api.serving.features import Value
from berth_api.serving.predictor import ModelOutput, Predicts

Rows = list[list[Value]]


class ModelBatcher:
    def __init__(
        self,
        predictor: Predicts,
        *,
        name: str,
        version: str,
        metrics: ApiMetrics,
        max_size: int,
        max_wait_seconds: float,
    ) -> None:
        self.predictor = predictor
        self._name, self._version = name, version
        self._metrics = metrics
        # One thread: calls to one model are serial, which is what lets requests queue up and
        # share a call; the event loop never runs a model.
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"model-{name}/{version}"
        )
        self._coalescer: Coalescer[Rows, list[ModelOutput]] = Coalescer(
            self._run, max_size=max_size, size=len, max_wait_seconds=max_wait_seconds
        )

    @property
    def engine(self) -> str:
        return self.predictor.engine

    @property
    def calls(self) -> int:
        return self._coalescer.calls

    @property
    def requests(self) -> int:
        return self._coalescer.items

    async def predict(self, rows: Rows) -> list[ModelOutput]:
        return await self._coalescer.submit(rows)

    async def _run(self, requests: list[Rows]) -> list[list[ModelOutput] | BaseException]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        answers = await loop.run_in_executor(self._executor, self._predict_all, requests)
        self._metrics.record_model_call(
            self._name,
            self._version,
            self.engine,
            sum(len(rows) for rows in requests),
            time.perf_counter() - started,
        )
        return answers

    def _predict_all(self, requests: list[Rows]) -> list[list[ModelOutput] | BaseException]:
        if len(requests) == 1:
            return [self._predict_one(requests[0])]
        try:
            outputs = self.predictor.predict([row for rows in requests for row in rows])
        except UnpredictableInput:
            return [self._predict_one(rows) for rows in requests]
        answers: list[list[ModelOutput] | BaseException] = []
        start = 0
        for rows in requests:
            answers.append(outputs[start : start + len(rows)])
            start += len(rows)
        return answers

    def _predict_one(self, rows: Rows) -> list[ModelOutput] | BaseException:
        try:
            return self.predictor.predict(rows)
        except UnpredictableInput as exc:
            return exc

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
