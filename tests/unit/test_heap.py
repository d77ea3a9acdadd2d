"""The collector's settings for a serving process: what requests in flight hold sets off no
collection, and what start-up made is left out of every collection."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest

from berth_common.heap import YOUNG_THRESHOLD, settle_heap


@pytest.fixture
def restored_collector() -> Iterator[list[int]]:
    """The generations of the collections run meanwhile; the collector as it was, afterwards."""
    threshold = gc.get_threshold()
    runs: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            runs.append(info["generation"])

    gc.callbacks.append(note)
    yield runs
    gc.callbacks.remove(note)
    gc.unfreeze()
    gc.set_threshold(*threshold)


def _requests_in_flight(requests: int) -> None:
    """Like 64 one-row predictions at a time: each holds some dicts and lists a moment, then
    lets them go, over and over."""
    for _ in range(200):
        held = [[{"row": [i, 1.0]}, [i]] for i in range(requests * 10)]
        del held


def test_requests_in_flight_set_off_no_collection_once_the_heap_is_settled(
    restored_collector: list[int],
) -> None:
    gc.set_threshold(700, 10, 10)  # Python's default
    _requests_in_flight(64)
    assert len(restored_collector) > 100  # what they cost before

    settle_heap()
    restored_collector.clear()
    _requests_in_flight(64)

    assert restored_collector == []
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD


def test_what_start_up_made_is_frozen_and_garbage_is_still_collected(
    restored_collector: list[int],
) -> None:
    settle_heap()
    assert gc.get_freeze_count() > 0

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    for _ in range(YOUNG_THRESHOLD):
        Cycle()

    assert restored_collector  # cycles past the threshold are collected
