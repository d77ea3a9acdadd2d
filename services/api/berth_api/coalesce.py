"""Continuous batching: concurrent callers' items served by one call, never by waiting for them.

While a call is in flight, new items queue; when it returns, everything queued (up to a size
limit) goes into the next call. An item that arrives at an idle coalescer is handled at once, so
a lone request pays nothing for batching; under load, requests share one model call or one Redis
round trip. An optional maximum wait lets a call hold back briefly for a fuller batch, which
trades latency for throughput and is off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Per item: its result, or the exception its caller gets.
Handler = Callable[[list[T]], Awaitable[list[R | BaseException]]]


@dataclass(slots=True)
class _Waiting(Generic[T, R]):
    item: T
    size: int
    future: asyncio.Future[R] = field(repr=False)


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps, or less if `stop` is set meanwhile.

    The API's background loops end when their event is set rather than by cancellation: a task
    cancelled while it waits for a thread (anyio's run_in_threadpool shields that wait) can lose
    the cancellation and run on, and a shutdown that waits for it would wait for ever.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


class Coalescer(Generic[T, R]):
    def __init__(
        self,
        handle: Handler[T, R],
        *,
        max_size: int,
        size: Callable[[T], int] = lambda _: 1,
        max_wait_seconds: float = 0.0,
    ) -> None:
        self._handle = handle
        self._max_size = max_size
        self._size = size
        self._max_wait = max_wait_seconds
        self._queue: deque[_Waiting[T, R]] = deque()
        self._queued_size = 0
        self._arrived = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        # how many calls and items so far: what batching achieved, for the logs and the bench
        self.calls = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        size = self._size(item)
        self._queue.append(_Waiting(item, size, future))
        self._queued_size += size
        self._arrived.set()
        if self._drainer is None:
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                if self._max_wait > 0 and self._queued_size < self._max_size:
                    await self._wait_for_more()
                batch = self._take()
                try:
                    results = await self._handle([waiting.item for waiting in batch])
                except Exception as exc:  # the callers get it; the coalescer carries on
                    results = [exc] * len(batch)
                except BaseException:  # cancelled: nobody may be left waiting forever
                    for waiting in batch:
                        waiting.future.cancel()
                    raise
                self.calls += 1
                self.items += len(batch)
                for waiting, result in zip(batch, results, strict=True):
                    if waiting.future.done():  # its caller went away (client disconnected)
                        continue
                    if isinstance(result, BaseException):
                        waiting.future.set_exception(result)
                    else:
                        waiting.future.set_result(result)
        finally:
            # No await between the empty-queue check and here, so no item can slip in unseen.
            self._drainer = None

    async def _wait_for_more(self) -> None:
        deadline = time.monotonic() + self._max_wait
        while self._queued_size < self._max_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self) -> list[_Waiting[T, R]]:
        """The oldest items up to max_size; always at least one, however big it is."""
        batch = [self._queue.popleft()]
        total = batch[0].size
        while self._queue and total + self._queue[0].size <= self._max_size:
            waiting = self._queue.popleft()
            total += waiting.size
            batch.append(waiting)
        self._queued_size -= total
        return batch
