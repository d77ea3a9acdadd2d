"""The pure parts of the consumer: reply parsing, stream id order, outcome arithmetic."""

from __future__ import annotations

from typing import Any

import pytest

from berth_worker.consumer import BatchOutcome, stream_entries, stream_id_key

ENTRY_A = (b"1700000000000-0", {b"v": b"1"})
ENTRY_B = (b"1700000000000-1", {b"v": b"1"})


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param([[b"berth:ledger", [ENTRY_A, ENTRY_B]]], id="resp2-list"),
        pytest.param({b"berth:ledger": [ENTRY_A, ENTRY_B]}, id="unified-dict"),
        pytest.param({b"berth:ledger": [[ENTRY_A, ENTRY_B]]}, id="resp3-legacy-dict"),
    ],
)
def test_stream_entries_reads_every_reply_shape(reply: Any) -> None:
    assert stream_entries(reply) == [ENTRY_A, ENTRY_B]


@pytest.mark.parametrize("reply", [None, [], {}, [[b"berth:ledger", []]]])
def test_stream_entries_of_an_empty_reply(reply: Any) -> None:
    assert stream_entries(reply) == []


def test_stream_entries_skips_entries_without_an_id() -> None:
    # redis-py turns a nil entry (Redis 6.2, deleted while pending) into (None, None).
    assert stream_entries([[b"s", [(None, None), ENTRY_B]]]) == [ENTRY_B]


def test_stream_entries_keeps_deleted_entries_with_an_id() -> None:
    # Redis 7 re-delivers a pending entry that was deleted as an id with no fields.
    assert stream_entries([[b"s", [(b"5-0", {})]]]) == [(b"5-0", {})]


def test_stream_ids_sort_numerically() -> None:
    ids = ["1700000000010-0", "1700000000000-10", "1700000000000-9", "999-0", "1700000000000"]

    assert sorted(ids, key=stream_id_key) == [
        "999-0",
        "1700000000000",
        "1700000000000-9",
        "1700000000000-10",
        "1700000000010-0",
    ]


def test_outcomes_add_up() -> None:
    total = BatchOutcome(entries=3, rows=5, acked=2, deferred=1) + BatchOutcome(
        entries=1, rows=0, acked=1, dead_lettered=1
    )

    assert total == BatchOutcome(entries=4, rows=5, acked=3, deferred=1, dead_lettered=1)
