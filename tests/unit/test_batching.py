"""Where a model call runs: quick calls on the event loop, slow ones in the model's thread."""

from __future__ import annotations

import asyncio
import threading
import time

from berth_api.monitoring import ApiMetrics
from berth_api.serving.batching import INLINE_BUDGET_SECONDS, ModelBatcher
from berth_api.serving.features import Value
from berth_api.serving.predictor import ModelOutput


class TimedModel:
    """Takes `seconds_per_row` per row and notes which thread each call ran on."""

    engine = "test"

    def __init__(self, seconds_per_row: float) -> None:
        self.seconds_per_row = seconds_per_row
        self.threads: list[int] = []

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        self.threads.append(threading.get_ident())
        time.sleep(self.seconds_per_row * len(rows))
        return [ModelOutput(label=float(sum(row)), probabilities=None) for row in rows]  # type: ignore[arg-type, misc]


def calls_on_loop(model: TimedModel, requests: list[list[list[Value]]]) -> list[bool]:
    """For each request, answered one after another: whether its call ran on the loop's thread."""

    async def run() -> list[bool]:
        batcher = ModelBatcher(
            model, name="m", version="1", metrics=ApiMetrics(), max_size=64, max_wait_seconds=0
        )
        loop_thread = threading.get_ident()
        try:
            for rows in requests:
                outputs = await batcher.predict(rows)
                assert [o.label for o in outputs] == [float(sum(row)) for row in rows]
            return [thread == loop_thread for thread in model.threads]
        finally:
            batcher.close()

    return asyncio.run(run())


def test_a_quick_model_is_called_on_the_loop_once_its_speed_is_known() -> None:
    model = TimedModel(seconds_per_row=0.0)
    # the first call measures the model in its thread; the next ones are known to be quick
    assert calls_on_loop(model, [[[1.0, 2.0]]] * 4) == [False, True, True, True]


def test_each_batch_size_is_measured_in_the_thread_before_it_runs_on_the_loop() -> None:
    model = TimedModel(seconds_per_row=0.0)
    one: list[list[Value]] = [[1.0, 2.0]]
    twenty: list[list[Value]] = [[float(i), 1.0] for i in range(20)]
    assert calls_on_loop(model, [one, twenty, twenty, one]) == [False, False, True, True]


def test_a_slow_model_stays_in_its_thread() -> None:
    model = TimedModel(seconds_per_row=INLINE_BUDGET_SECONDS * 3)
    assert calls_on_loop(model, [[[1.0, 2.0]]] * 3) == [False, False, False]


def test_a_batch_too_big_for_the_budget_goes_to_the_thread() -> None:
    model = TimedModel(seconds_per_row=INLINE_BUDGET_SECONDS / 8)
    one: list[list[Value]] = [[1.0, 2.0]]
    twenty: list[list[Value]] = [[float(i), 1.0] for i in range(20)]  # 2.5 budgets
    assert calls_on_loop(model, [one, one, twenty, one]) == [False, True, False, True]
