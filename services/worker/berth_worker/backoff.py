"""Retry delays for a dependency that is down.

Full jitter (a uniform draw between zero and the exponential ceiling) keeps several workers that
lost the same database from hammering it in lockstep when it comes back.
"""

from __future__ import annotations

import random

BASE_DELAY_SECONDS = 0.1
# 2**32 * base is far above any sensible cap; bounding the exponent keeps the float finite.
_MAX_EXPONENT = 32


def backoff_delay(
    attempt: int,
    *,
    cap: float,
    base: float = BASE_DELAY_SECONDS,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry)."""
    if attempt < 0:
        raise ValueError("attempt must be >= 0")
    ceiling = min(cap, base * 2 ** min(attempt, _MAX_EXPONENT))
    return (rng or random).uniform(0.0, ceiling)
