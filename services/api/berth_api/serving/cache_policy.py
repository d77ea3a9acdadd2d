"""Whether a model's answers are worth caching, decided once, when the model is loaded.

A cache hit saves the model's time for a repeated row, but every row pays for the cache whether
it repeats or not: its key, a Redis read before the model and a write after. `make bench`
measured that at about 14 µs of CPU per row (API and Redis) for 100-row requests, and far more
for single rows. A compiled model computes a row in a few microseconds once its calls are
batched, so caching it made every request slower, even when every row repeated; a scikit-learn
forest takes a hundred microseconds or more per row even in a full batch, and a hit saves it.

So its answers are cached when the model's own time (`timing`, measured when it is loaded) is at
least CACHE_MIN_ROW_US per row, both for one row alone and per row of a call of BATCH_MAX_SIZE
rows. A model that was not timed (no example row, an example the model refuses) and one too slow
to time in a full batch are cached: that costs some CPU, and cannot give a wrong answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from berth_api.serving.timing import ModelTiming


@dataclass(frozen=True)
class CachePolicy:
    cache: bool
    reason: str
    # The model's own seconds for one row alone, and per row in a call of BATCH_MAX_SIZE rows;
    # None when not timed.
    alone_seconds: float | None = None
    batched_seconds: float | None = None


def decide(timing: ModelTiming, *, enabled: bool, min_row_seconds: float) -> CachePolicy:
    alone, batched = timing.alone_seconds, timing.batched_seconds
    if not enabled:
        return CachePolicy(False, "CACHE_ENABLED=false", alone, batched)
    if min_row_seconds <= 0:
        return CachePolicy(True, "CACHE_MIN_ROW_US=0 caches every model", alone, batched)
    if alone is None:
        return CachePolicy(True, timing.untimed or "the model was not timed")
    threshold = f"CACHE_MIN_ROW_US={min_row_seconds * 1e6:g}"
    if alone < min_row_seconds:
        return CachePolicy(
            False,
            f"one row takes the model {alone * 1e6:.1f} µs, under {threshold}: "
            "the cache would cost more than it saves",
            alone,
            batched,
        )
    if batched is None:
        return CachePolicy(
            True, f"one row takes the model {alone * 1e6:.1f} µs, at least {threshold}", alone
        )
    measured = (
        f"the model takes {alone * 1e6:.1f} µs for one row, "
        f"{batched * 1e6:.1f} µs per row in a call of {timing.batch_rows}"
    )
    if batched >= min_row_seconds:
        return CachePolicy(True, f"{measured}, at least {threshold}", alone, batched)
    return CachePolicy(
        False,
        f"{measured}, under {threshold}: the cache would cost more than it saves",
        alone,
        batched,
    )
