"""Whether a model's answers are worth caching, decided once, when the model is loaded.

A cache hit saves the model's time for a repeated row, but every row pays for the cache whether
it repeats or not: its key, a Redis read before the model and a write after. `make bench`
measured that at about 14 µs of CPU per row (API and Redis) for 100-row requests, and far more
for single rows. A compiled model computes a row in a few microseconds once its calls are
batched, so caching it made every request slower, even when every row repeated; a scikit-learn
forest takes a hundred microseconds or more per row even in a full batch, and a hit saves it.

So the model is timed on its bundle's example row when it is loaded: one row alone, then (unless
one row alone is already under the threshold) a call of BATCH_MAX_SIZE rows. Its answers are
cached when both take at least CACHE_MIN_ROW_US per row. A bundle without an example, one whose
example the model refuses, and one too slow to time in a full batch (BATCH_TIMING_BUDGET) are
cached: that costs some CPU, and cannot give a wrong answer.
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
# The most seconds spent timing a model's full batch at start-up (each API process does it).
BATCH_TIMING_BUDGET = 1.0


@dataclass(frozen=True)
class CachePolicy:
    cache: bool
    reason: str
    # The model's own seconds for one row alone, and per row in a call of BATCH_MAX_SIZE rows;
    # None when not timed.
    alone_seconds: float | None = None
    batched_seconds: float | None = None


def decide(
    predictor: Predicts,
    metadata: BundleMetadata,
    *,
    enabled: bool,
    min_row_seconds: float,
    batch_rows: int,
) -> CachePolicy:
    if not enabled:
        return CachePolicy(False, "CACHE_ENABLED=false")
    if min_row_seconds <= 0:
        return CachePolicy(True, "CACHE_MIN_ROW_US=0 caches every model")
    row = _example_row(metadata)
    if row is None:
        return CachePolicy(True, "the bundle has no example row the model can be timed on")
    threshold = f"CACHE_MIN_ROW_US={min_row_seconds * 1e6:g}"
    try:
        alone = _quickest(predictor, [row], budget=BATCH_TIMING_BUDGET)
        if alone < min_row_seconds:
            return CachePolicy(
                False,
                f"one row takes the model {alone * 1e6:.1f} µs, under {threshold}: "
                "the cache would cost more than it saves",
                alone,
            )
        if batch_rows <= 1 or alone * batch_rows > BATCH_TIMING_BUDGET:
            return CachePolicy(
                True, f"one row takes the model {alone * 1e6:.1f} µs, at least {threshold}", alone
            )
        batched = _quickest(predictor, [row] * batch_rows, budget=BATCH_TIMING_BUDGET) / batch_rows
    except Exception as exc:  # any failure on the example means "not timed", not "not served"
        return CachePolicy(True, f"the model could not be timed on its example row: {exc}")
    measured = (
        f"the model takes {alone * 1e6:.1f} µs for one row, "
        f"{batched * 1e6:.1f} µs per row in a call of {batch_rows}"
    )
    if batched >= min_row_seconds:
        return CachePolicy(True, f"{measured}, at least {threshold}", alone, batched)
    return CachePolicy(
        False,
        f"{measured}, under {threshold}: the cache would cost more than it saves",
        alone,
        batched,
    )


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
