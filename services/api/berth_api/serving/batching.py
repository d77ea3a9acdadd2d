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
other requests. The estimate is the model's own recent time for calls of about that many rows
(the same power of two), measured on every call; a size not yet measured goes to the thread.
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
# Weight of the newest call in the running estimate of a call's seconds.
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
        # Seconds per call, by the bit length of its row count (1, 2-3, 4-7, ... rows); a size
        # not measured yet goes to the thread.
        self._seconds: dict[int, float] = {}

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
        if self._seconds.get(rows.bit_length(), INLINE_BUDGET_SECONDS + 1) <= INLINE_BUDGET_SECONDS:
            answers = self._timed(requests, rows)
        else:
            loop = asyncio.get_running_loop()
            answers = await loop.run_in_executor(self._executor, self._timed, requests, rows)
        self._metrics.record_model_call(
            self._name, self._version, self.engine, rows, time.perf_counter() - started
        )
        return answers

    def _timed(self, requests: list[Rows], rows: int) -> list[list[ModelOutput] | BaseException]:
        """The call, and its time in the estimate for its size (the thread hand-off left out)."""
        started = time.perf_counter()
        try:
            return self._predict_all(requests)
        finally:
            seconds = time.perf_counter() - started
            size = rows.bit_length()
            known = self._seconds.get(size)
            self._seconds[size] = (
                seconds if known is None else known + _ESTIMATE_WEIGHT * (seconds - known)
            )

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
