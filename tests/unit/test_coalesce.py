"""Continuous batching: what a caller gets, and which items share a call."""

from __future__ import annotations

import asyncio

import pytest

from berth_api.coalesce import Coalescer


class Recorder:
    """A handler that remembers each call's items and can be held mid-call."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        self.entered.set()
        await self.release.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def held(coalescer: Coalescer[int, int], handler: Recorder) -> asyncio.Task[int]:
    """Submits 1 and holds its call in the handler until `handler.release` is set."""
    handler.release.clear()
    first = asyncio.create_task(coalescer.submit(1))
    await handler.entered.wait()
    return first


def test_a_lone_item_is_handled_at_once_alone() -> None:
    async def run() -> None:
        handler = Recorder()
        coalescer = Coalescer(handler, max_size=8)
        assert await coalescer.submit(3) == 30
        assert await coalescer.submit(4) == 40
        assert handler.calls == [[3], [4]]

    asyncio.run(run())


def test_items_arriving_during_a_call_share_the_next_one() -> None:
    async def run() -> None:
        handler = Recorder()
        coalescer = Coalescer(handler, max_size=8)
        first = await held(coalescer, handler)
        later = [asyncio.create_task(coalescer.submit(i)) for i in range(2, 7)]
        await asyncio.sleep(0)
        handler.release.set()
        assert await first == 10
        assert await asyncio.gather(*later) == [20, 30, 40, 50, 60]
        assert handler.calls == [[1], [2, 3, 4, 5, 6]]
        assert (coalescer.calls, coalescer.items) == (2, 6)

    asyncio.run(run())


def test_max_size_splits_calls_and_an_oversized_item_goes_alone() -> None:
    async def run() -> None:
        handler = Recorder()
        sizes = {1: 1, 2: 1, 3: 1, 100: 100, 4: 1}
        coalescer = Coalescer(handler, max_size=2, size=lambda i: sizes[i])
        results = await asyncio.gather(*(coalescer.submit(i) for i in (1, 2, 3, 100, 4)))
        assert results == [10, 20, 30, 1000, 40]
        assert handler.calls == [[1, 2], [3], [100], [4]]

    asyncio.run(run())


def test_each_caller_gets_its_own_error_and_the_rest_their_results() -> None:
    async def run() -> None:
        coalescer = Coalescer(Recorder(), max_size=8)
        results = await asyncio.gather(
            *(coalescer.submit(i) for i in (1, -2, 3)), return_exceptions=True
        )
        assert results[0] == 10
        assert results[2] == 30
        assert isinstance(results[1], ValueError)
        assert str(results[1]) == "bad -2"

    asyncio.run(run())


def test_a_failing_handler_fails_its_batch_only() -> None:
    async def run() -> None:
        failures = iter([RuntimeError("redis went away")])

        async def handler(items: list[int]) -> list[int | BaseException]:
            failure = next(failures, None)
            if failure is not None:
                raise failure
            return list(items)

        coalescer = Coalescer(handler, max_size=8)
        with pytest.raises(RuntimeError, match="redis went away"):
            await coalescer.submit(1)
        assert await coalescer.submit(2) == 2

    asyncio.run(run())


def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    async def run() -> None:
        handler = Recorder()
        coalescer = Coalescer(handler, max_size=8)
        first = await held(coalescer, handler)
        gone = asyncio.create_task(coalescer.submit(2))
        stays = asyncio.create_task(coalescer.submit(3))
        await asyncio.sleep(0)
        gone.cancel()
        handler.release.set()
        assert await first == 10
        assert await stays == 30
        assert gone.cancelled()

    asyncio.run(run())


def test_max_wait_holds_a_call_for_more_items_but_not_past_a_full_batch() -> None:
    async def run() -> None:
        handler = Recorder()
        # a wait far longer than the test may take: only a full batch can let the call go
        coalescer = Coalescer(handler, max_size=3, max_wait_seconds=60.0)
        first = asyncio.create_task(coalescer.submit(1))
        await asyncio.sleep(0.05)
        assert handler.calls == []  # held back, waiting for more
        rest = [asyncio.create_task(coalescer.submit(i)) for i in (2, 3)]
        results = await asyncio.wait_for(asyncio.gather(first, *rest), timeout=10)
        assert results == [10, 20, 30]
        assert handler.calls == [[1, 2, 3]]

    asyncio.run(run())
