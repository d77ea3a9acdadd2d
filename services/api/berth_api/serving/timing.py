"""A model's own time per call, measured once when it is loaded, on its bundle's example row.

Two decisions rest on it: whether the model's answers are worth caching (`cache_policy`), and
which of its calls are quick enough to run on the event loop (`batching`). It is measured before
the process serves anything, so it is the model's own time: a call timed under load also holds
the waits of a busy machine, and one timed in the model's thread the wait for the GIL.

One row alone is timed first, then a call of BATCH_MAX_SIZE rows, unless it could take more than
BATCH_TIMING_BUDGET; the quickest of TIMED_CALLS calls of each counts. A bundle without an
example, one whose example does not validate and a model that fails on its example are not
timed, and say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter

from berth_api.bundles.bundle import BundleMetadata
from berth_api.errors import InvalidInput
from berth_api.serving.features import Value, rows_from_instances
from berth_api.serving.predictor import Predicts

# Calls of each size timed; the quickest counts (the first call of a model is often slower:
# its memory is not yet touched).
TIMED_CALLS = 3
# The most seconds spent timing one call size at start-up (each API process does it).
BATCH_TIMING_BUDGET = 1.0


@dataclass(frozen=True)
class ModelTiming:
    # The model's own seconds for one row alone, and per row in a call of `batch_rows` rows;
    # None when not timed.
    alone_seconds: float | None = None
    batched_seconds: float | None = None
    batch_rows: int = 0
    # Why the model was not timed at all; None when it was.
    untimed: str | None = None

    def call_seconds(self, rows: int) -> float | None:
        """The model's own seconds for a call of `rows` rows: on the line through one row alone
        and the full batch, and past the batch at that line's cost per row; None when the call's
        size was not covered by the timing."""
        if self.alone_seconds is None:
            return None
        if rows <= 1:
            return self.alone_seconds
        if self.batched_seconds is None or self.batch_rows <= 1:
            return None
        full = self.batched_seconds * self.batch_rows
        per_row = max(0.0, (full - self.alone_seconds) / (self.batch_rows - 1))
        return self.alone_seconds + (rows - 1) * per_row


def time_model(predictor: Predicts, metadata: BundleMetadata, *, batch_rows: int) -> ModelTiming:
    row = _example_row(metadata)
    if row is None:
        return ModelTiming(untimed="the bundle has no example row the model can be timed on")
    try:
        alone = _quickest(predictor, [row], budget=BATCH_TIMING_BUDGET)
        if batch_rows <= 1 or alone * batch_rows > BATCH_TIMING_BUDGET:
            return ModelTiming(alone, None, batch_rows)
        full = _quickest(predictor, [row] * batch_rows, budget=BATCH_TIMING_BUDGET)
    except Exception as exc:  # any failure on the example means "not timed", not "not served"
        return ModelTiming(untimed=f"the model could not be timed on its example row: {exc}")
    return ModelTiming(alone, full / batch_rows, batch_rows)


def _quickest(predictor: Predicts, rows: list[list[Value]], *, budget: float) -> float:
    """The quickest of up to TIMED_CALLS calls; no more calls once another could pass `budget`
    seconds in all."""
    best, spent = float("inf"), 0.0
    for _ in range(TIMED_CALLS):
        started = perf_counter()
        predictor.predict(rows)
        seconds = perf_counter() - started
        best, spent = min(best, seconds), spent + seconds
        if spent + best > budget:
            break
    return best


def _example_row(metadata: BundleMetadata) -> list[Value] | None:
    if metadata.example is None:
        return None
    try:
        return rows_from_instances(
            metadata, [metadata.example], max_rows=1, max_string_length=1_000_000
        )[0]
    except InvalidInput:
        return None
