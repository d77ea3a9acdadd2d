"""How far the ledger's consumer group is behind, from what Redis knows for certain.

Redis reports a group's `lag` (entries added minus entries read), but documents it as unknown or
approximate once entries were deleted, trimmed or claimed; on a stack that had been through
those it reported 7,373 unread entries for an empty stream. Unread entries are counted here
instead: none when the group's last delivered id is the stream's last id (the usual case for a
worker that keeps up, which costs nothing more), otherwise the entries after it, counted inside
Redis by a script that returns only the number, up to `COUNT_LIMIT`. Pending entries and the age
of the oldest come from XPENDING's summary, which is exact.

The same reads serve /readyz, the metrics and the audit, through a sync or an asyncio client.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from berth_common.replies import as_text

# Counting further costs Redis more than a figure this large is worth: "at least this many".
# The script copies every entry it counts, and one entry holds the records of every request that
# shared a round trip: under 100-row requests at 64 connections, megabytes. Counting up to 10,000
# such entries blocked Redis for 120-400 ms a call (SLOWLOG); the API's pipelines queued behind
# it past their 0.5 s timeout, and a timed-out append that had in fact been made was made again
# (redis-py's retry, or the spool), counting its rows as served twice: `make audit` then showed
# 4,900-7,200 rows unaccounted after a batch load. Up to 100, the same load balanced once, but
# the calls still took 50-400 ms: a count that does not copy the entries is still to be written.
COUNT_LIMIT = 100
# The number of entries after an id (up to a limit), and the first of them: only these cross the
# network, not the entries.
_COUNT_AFTER = """
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
if #entries == 0 then return {0, false} end
return {#entries, entries[1][1]}
"""


@dataclass(frozen=True, slots=True)
class Backlog:
    # entries the group has not yet delivered to any consumer; at least this many if capped
    unread: int
    unread_capped: bool
    # delivered to a consumer, not yet acknowledged
    pending: int
    oldest_pending_age_seconds: float | None
    oldest_unread_age_seconds: float | None
    length: int

    @property
    def waiting(self) -> int:
        return self.unread + self.pending

    @property
    def oldest_waiting_age_seconds(self) -> float | None:
        """How long the oldest entry not yet stored has waited: the ledger's lag right now."""
        ages = [
            age
            for age in (self.oldest_pending_age_seconds, self.oldest_unread_age_seconds)
            if age is not None
        ]
        return max(ages) if ages else None

    def describe(self) -> str:
        unread = f"{self.unread}+" if self.unread_capped else str(self.unread)
        age = (
            f", oldest {self.oldest_pending_age_seconds:.1f} s"
            if self.oldest_pending_age_seconds is not None
            else ""
        )
        return f"{unread} entries unread, {self.pending} pending{age}"


class NoGroup(Exception):
    """The stream or its consumer group does not exist yet: no worker has started."""


def read_backlog(client: redis.Redis, stream: str, group: str) -> Backlog:
    pipe = client.pipeline(transaction=False)
    _queue(pipe, stream, group)
    first = _parse_first(pipe.execute(raise_on_error=False), group)
    counted = None
    if first.needs_count:
        counted = client.eval(_COUNT_AFTER, 1, stream, f"({first.last_delivered}", COUNT_LIMIT)
    return first.backlog(counted)


async def read_backlog_async(client: redis.asyncio.Redis, stream: str, group: str) -> Backlog:
    pipe = client.pipeline(transaction=False)
    _queue(pipe, stream, group)
    first = _parse_first(await pipe.execute(raise_on_error=False), group)
    counted = None
    if first.needs_count:
        counted = await client.eval(
            _COUNT_AFTER, 1, stream, f"({first.last_delivered}", COUNT_LIMIT
        )
    return first.backlog(counted)


def _queue(pipe: Any, stream: str, group: str) -> None:
    pipe.xinfo_stream(stream)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, group)


@dataclass(frozen=True, slots=True)
class _FirstReads:
    length: int
    last_delivered: str
    last_generated: str
    pending: int
    oldest_pending_id: str | None

    @property
    def needs_count(self) -> bool:
        return self.length > 0 and _key(self.last_delivered) < _key(self.last_generated)

    def backlog(self, counted: Any) -> Backlog:
        """`counted`: the script's reply, [count, first id or nil], when it was needed."""
        unread, first_unread = (int(counted[0]), counted[1]) if counted else (0, None)
        return Backlog(
            unread=unread,
            unread_capped=unread >= COUNT_LIMIT,
            pending=self.pending,
            oldest_pending_age_seconds=_age(self.oldest_pending_id),
            oldest_unread_age_seconds=_age(as_text(first_unread) if first_unread else None),
            length=self.length,
        )


def _parse_first(results: list[Any], group: str) -> _FirstReads:
    stream_info, groups, pending = results
    for result in (stream_info, groups, pending):
        if isinstance(result, redis.ResponseError):
            raise NoGroup(str(result))
        if isinstance(result, Exception):
            raise result
    found = next((g for g in groups if as_text(g["name"]) == group), None)
    if found is None:
        raise NoGroup(f"no consumer group {group!r}")
    oldest = pending.get("min")
    return _FirstReads(
        length=int(stream_info["length"]),
        last_delivered=as_text(found["last-delivered-id"]),
        last_generated=as_text(stream_info["last-generated-id"]),
        pending=int(pending["pending"]),
        oldest_pending_id=as_text(oldest) if oldest else None,
    )


def _age(stream_id: str | None) -> float | None:
    """Seconds since the entry was added: its id starts with the time of the XADD."""
    if stream_id is None:
        return None
    return max(0.0, time.time() - _key(stream_id)[0] / 1000)


def _key(stream_id: str) -> tuple[int, int]:
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence or 0)
