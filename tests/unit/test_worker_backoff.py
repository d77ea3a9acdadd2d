"""Retry delays of the worker: full jitter under an exponential ceiling and a hard cap."""

from __future__ import annotations

import random

import pytest

from berth_worker.backoff import BASE_DELAY_SECONDS, backoff_delay


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 5, 8])
def test_delay_stays_under_the_exponential_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(30.0, BASE_DELAY_SECONDS * 2**attempt)

    delays = [backoff_delay(attempt, cap=30.0, rng=rng) for _ in range(500)]

    assert all(0.0 <= delay <= ceiling for delay in delays)
    # Full jitter spreads the delays over the whole range instead of clustering at the ceiling.
    assert min(delays) < ceiling * 0.1
    assert max(delays) > ceiling * 0.9


@pytest.mark.parametrize("attempt", [20, 64, 10_000])
def test_cap_holds_for_any_attempt(attempt: int) -> None:
    rng = random.Random(7)

    delays = [backoff_delay(attempt, cap=2.5, rng=rng) for _ in range(500)]

    assert max(delays) <= 2.5
    assert max(delays) > 2.0


def test_same_seed_same_delays() -> None:
    first = [backoff_delay(n, cap=5.0, rng=random.Random(42)) for n in range(6)]
    second = [backoff_delay(n, cap=5.0, rng=random.Random(42)) for n in range(6)]

    assert first == second


def test_base_sets_the_first_ceiling() -> None:
    delays = [backoff_delay(0, cap=10.0, base=0.01, rng=random.Random(n)) for n in range(200)]

    assert max(delays) <= 0.01


def test_negative_attempt_is_a_bug() -> None:
    with pytest.raises(ValueError, match="attempt"):
        backoff_delay(-1, cap=1.0)
