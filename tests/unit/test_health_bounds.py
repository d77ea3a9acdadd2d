"""/readyz's checks in threads are bounded in time, and a stuck one does not pile up threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from berth_api.ledger.health import _in_thread_within


def test_a_check_stuck_in_its_thread_is_abandoned_in_time_and_not_started_twice() -> None:
    release = threading.Event()
    started: list[float] = []

    def stuck() -> str:
        started.append(time.monotonic())
        release.wait(10)
        return "late"

    async def run() -> tuple[float, float, str]:
        begun = time.monotonic()
        with pytest.raises(TimeoutError):
            await _in_thread_within(0.3, "db", stuck)
        first = time.monotonic() - begun
        begun = time.monotonic()
        with pytest.raises(TimeoutError):  # waits for the stuck one's thread, not a new one
            await _in_thread_within(0.3, "db", stuck)
        second = time.monotonic() - begun
        release.set()
        await asyncio.sleep(0.2)  # the abandoned thread ends and gives its place back
        return first, second, await _in_thread_within(1.0, "db", lambda: "answered")

    first, second, answer = asyncio.run(run())
    assert first < 1.0
    assert second < 1.0
    assert len(started) == 1
    assert answer == "answered"
