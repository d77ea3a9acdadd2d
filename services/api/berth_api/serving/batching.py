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
other requests.

The estimate for a call is the larger of two figures. The first is the model's own time for a
call of that many rows, measured when it was loaded (`timing`), before anything else competed
with it. The second is its recent time for calls of about that many rows (the same power of
two), measured on every call: on the loop by the clock, in the thread by the thread's CPU time,
and each call at most twice the estimate, so that one call that was preempted does not send a
quick model to its thread.

In the thread the clock would count the wait for the GIL, which the event loop holds under load
for up to the interpreter's switch interval (5 ms): by the clock, a compiled model's 400 µs call
of 100 rows took milliseconds there, so that size stayed in the thread until a call happened to
get the GIL at once (under `make profile`'s batch load, half the model's time was spent in the
thread). The CPU time leaves out what the model waits for, which is why the load-time figure is
the floor: a model whose own threads do the work, or that waits for something, is still known
to be slow.

A call size the load-time timing does not cover (a model not timed at all, or one too slow to
time in a full batch, for more than one row) has no floor: not yet measured, it goes to the
thread, and there it is measured by the clock, which errs towards the thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from berth_api.coalesce import Coalescer
from berth_api.errors import UnpredictableInput
from berth_api.monitoring import ApiMetrics
from berth_api.serving.features import Value
from berth_api.serving.predictor import ModelOutput, Predicts
from berth_api.serving.timing import ModelTiming

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
        timing: ModelTiming | None = None,
    ) -> None:
        self.predictor = predictor
        self._timing = timing or ModelTiming()
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
        # Recent seconds per call, by the bit length of its row count (1, 2-3, 4-7, ... rows).
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
        if self.expected_seconds(rows) <= INLINE_BUDGET_SECONDS:
            answers = self._timed(requests, rows, time.perf_counter)
        else:
            # by the thread's CPU only where the load-time floor stands behind it
            clock = (
                time.perf_counter if self._timing.call_seconds(rows) is None else time.thread_time
            )
            loop = asyncio.get_running_loop()
            answers = await loop.run_in_executor(self._executor, self._timed, requests, rows, clock)
        self._metrics.record_model_call(
            self._name, self._version, self.engine, rows, time.perf_counter() - started
        )
        return answers

    def expected_seconds(self, rows: int) -> float:
        """What a call of `rows` rows is expected to take; infinite when nothing is known."""
        figures = [
            figure
            for figure in (self._seconds.get(rows.bit_length()), self._timing.call_seconds(rows))
            if figure is not None
        ]
        return max(figures, default=float("inf"))

    def _timed(
        self, requests: list[Rows], rows: int, clock: Callable[[], float]
    ) -> list[list[ModelOutput] | BaseException]:
        """The call, and its time by `clock` in the estimate for its size (the thread hand-off
        left out)."""
        started = clock()
        try:
            return self._predict_all(requests)
        finally:
            seconds = clock() - started
            size = rows.bit_length()
            known = self._seconds.get(size)
            if known is None:
                known = self._timing.call_seconds(rows)
            if known is None:
                self._seconds[size] = seconds
            else:
                # a call at most twice as long as expected counts in full: one call that waited
                # (the process preempted) moves the estimate by a fifth, a slower model in a few
                seconds = min(seconds, 2 * known)
                self._seconds[size] = known + _ESTIMATE_WEIGHT * (seconds - known)

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
