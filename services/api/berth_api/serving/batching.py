"""One model's calls, continuously batched, and run in the model's own thread unless they are
quick.

Requests that arrive while the model is busy share its next call (see `coalesce`), so a model
that costs the same for one row as for sixty-four serves sixty-four times the requests. One bad
request cannot fail the others it was batched with: when the model refuses a combined call, each
request is run on its own and only the one at fault gets the error.

A call expected to take less than INLINE_BUDGET_SECONDS runs on the event loop itself. Handing it
to the model's thread and back costs two thread wake-ups and a write to the loop's self-pipe,
which for a compiled model's one-row call was several times the call itself; a scikit-learn
model's call takes milliseconds and always goes to the thread, where it does not hold up the
other requests. The estimate is the model's own recent time per row, measured on every call.
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

# The longest a model call may hold the event loop: about what a few requests' own Python costs.
INLINE_BUDGET_SECONDS = 0.001
# Weight of the newest call in the running estimate of seconds per row.
_ESTIMATE_WEIGHT = 0.2


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
        # Unknown until measured: the first call goes to the thread.
        self._seconds_per_row = float("inf")
        self.inline_calls = 0

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
        rows = sum(len(request) for request in requests)
        started = time.perf_counter()
        if self._seconds_per_row * rows <= INLINE_BUDGET_SECONDS:
            self.inline_calls += 1
            answers = self._timed(requests, rows)
        else:
            loop = asyncio.get_running_loop()
            answers = await loop.run_in_executor(self._executor, self._timed, requests, rows)
        self._metrics.record_model_call(
            self._name, self._version, self.engine, rows, time.perf_counter() - started
        )
        return answers

    def _timed(self, requests: list[Rows], rows: int) -> list[list[ModelOutput] | BaseException]:
        """The call, and its time per row in the estimate (the thread hand-off left out)."""
        started = time.perf_counter()
        try:
            return self._predict_all(requests)
        finally:
            per_row = (time.perf_counter() - started) / max(rows, 1)
            if self._seconds_per_row == float("inf"):
                self._seconds_per_row = per_row
            else:
                self._seconds_per_row += _ESTIMATE_WEIGHT * (per_row - self._seconds_per_row)

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
