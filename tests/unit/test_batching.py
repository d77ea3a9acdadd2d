"""Where a model call runs: quick calls on the event loop, slow ones in the model's thread."""

from __future__ import annotations

import asyncio
import threading
import time

from berth_api.monitoring import ApiMetrics
from berth_api.serving.batching import INLINE_BUDGET_SECONDS, ModelBatcher
from berth_api.serving.features import Value
from berth_api.serving.predictor import ModelOutput
from berth_api.serving.timing import ModelTiming


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


class WaitingModel(TimedModel):
    """Costs no CPU, but waits `seconds` in its first `slow_calls` calls on the loop, and in
    every call it gets in the model's thread: what a call in the thread looks like by the clock
    under load, when it waits for the GIL before it can return."""

    def __init__(self, seconds: float, slow_calls: int) -> None:
        super().__init__(seconds_per_row=0.0)
        self.seconds, self.slow_calls = seconds, slow_calls

    def predict(self, rows: list[list[Value]]) -> list[ModelOutput]:
        outputs = super().predict(rows)
        if threading.current_thread() is not threading.main_thread():
            time.sleep(self.seconds)
        elif self.slow_calls > 0:
            self.slow_calls -= 1
            time.sleep(self.seconds)
        return outputs


def calls_on_loop(
    model: TimedModel, requests: list[list[list[Value]]], timing: ModelTiming | None = None
) -> list[bool]:
    """For each request, answered one after another: whether its call ran on the loop's thread."""

    async def run() -> list[bool]:
        batcher = ModelBatcher(
            model,
            name="m",
            version="1",
            metrics=ApiMetrics(),
            max_size=64,
            max_wait_seconds=0,
            timing=timing,
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


def timed_at_load(call_seconds: float) -> ModelTiming:
    """What loading measured for a model taking `call_seconds` a call, whatever its rows."""
    return ModelTiming(alone_seconds=call_seconds, batched_seconds=call_seconds / 64, batch_rows=64)


def test_a_model_timed_quick_at_load_is_called_on_the_loop_from_its_first_call() -> None:
    model = TimedModel(seconds_per_row=0.0)
    twenty: list[list[Value]] = [[float(i), 1.0] for i in range(20)]
    timing = timed_at_load(INLINE_BUDGET_SECONDS / 10)
    assert calls_on_loop(model, [[[1.0, 2.0]], twenty, [[1.0, 2.0]]], timing) == [True] * 3


def test_a_model_timed_slow_at_load_stays_in_its_thread_though_it_costs_no_cpu_there() -> None:
    # its own threads do the work, or it waits for something: the thread's CPU time says
    # nothing of that, the time measured at load does
    model = TimedModel(seconds_per_row=INLINE_BUDGET_SECONDS / 4)
    timing = timed_at_load(INLINE_BUDGET_SECONDS * 3)
    assert calls_on_loop(model, [[[1.0, 2.0]]] * 4, timing) == [False] * 4


def test_one_slow_call_does_not_send_a_quick_model_to_its_thread() -> None:
    # the process was preempted, say: the call counts as twice the estimate, not as 3 ms
    model = WaitingModel(INLINE_BUDGET_SECONDS * 3, slow_calls=1)
    timing = timed_at_load(INLINE_BUDGET_SECONDS / 2)
    assert calls_on_loop(model, [[[1.0, 2.0]]] * 4, timing) == [True] * 4


def test_a_quick_model_sent_to_its_thread_comes_back_though_it_waits_there() -> None:
    # Four slow calls on the loop in a row (0.5 ms expected, each counted as twice that) send
    # it to the thread; there every call waits, as it waits for the GIL under load, and costs no
    # CPU. Timed by the clock it would stay in the thread for good; by the thread's CPU it
    # comes back at once.
    model = WaitingModel(INLINE_BUDGET_SECONDS * 3, slow_calls=4)
    timing = timed_at_load(INLINE_BUDGET_SECONDS / 2)
    on_loop = calls_on_loop(model, [[[1.0, 2.0]]] * 8, timing)
    assert on_loop == [True] * 4 + [False] + [True] * 3


def test_an_untimed_model_waiting_in_its_thread_stays_there() -> None:
    # without a load-time floor, the thread's calls are timed by the clock: erring towards the
    # thread is the safe side for a model nothing is known of
    model = WaitingModel(INLINE_BUDGET_SECONDS * 3, slow_calls=0)
    assert calls_on_loop(model, [[[1.0, 2.0]]] * 4) == [False] * 4


def test_a_size_the_load_time_timing_did_not_cover_is_timed_by_the_clock_in_its_thread() -> None:
    # one row was timed (slow: no full batch was tried); two rows have no floor, so their
    # calls, waiting in the thread without CPU, are timed by the clock and stay there
    model = WaitingModel(INLINE_BUDGET_SECONDS * 3, slow_calls=0)
    timing = ModelTiming(alone_seconds=INLINE_BUDGET_SECONDS * 3, batch_rows=64)
    two: list[list[Value]] = [[1.0, 2.0], [3.0, 4.0]]
    assert calls_on_loop(model, [two] * 4, timing) == [False] * 4
