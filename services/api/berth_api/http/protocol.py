"""The HTTP protocol of every API process: httptools', with a deadline on reading each request.

uvicorn closes a keep-alive connection that stays idle, but not one whose client opened it and
never finished a request: a connection that sends nothing, half a header or a trickle of body is
held for ever, and a few hundred of them hold a few hundred sockets and tasks. This protocol
gives every request a deadline for its headers (from the connection's first byte, or from the
request's first byte on a kept-alive connection) and one for its body (from the end of the
headers); a request that misses one is answered 408 and its connection closed.

It also sends a response's head and body in one write where uvicorn makes two: a one-row
prediction's response is a few hundred bytes, and the second system call (and TCP segment) cost
about as much CPU as the rest of sending it.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from berth_api.errors import RequestTimeout, error_problem
from berth_api.http.endpoints import error_style
from berth_common.settings import ApiSettings

logger = logging.getLogger(__name__)


# How often each process looks for connections past their deadline: a deadline is kept to
# within this much, for one timer per process instead of two per request.
SWEEP_SECONDS = 0.25


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol with deadlines for reading a request's headers and its body.

    The deadlines are the settings the lifespan put in the app state, read per connection, so
    that the protocol (which uvicorn builds from an import string in each worker process) needs
    no settings of its own. Arming one is noting a time; a sweep of the process's connections
    every SWEEP_SECONDS closes those past theirs (a timer per request phase, created and
    cancelled on every request, cost a few percent of a one-row prediction's CPU).
    """

    _deadline_at: float | None = None
    _phase = "headers"
    _timeouts: dict[str, float]
    _head_held: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # one for the connection's every response, in order, as its transport is: made per
        # response, it cost about 2 % of a one-row prediction's CPU
        self._head_held = cast(asyncio.Transport, HeadHeldTransport(transport))
        self._timeouts = {phase: self._timeout_of(phase) for phase in ("headers", "body")}
        _sweeper(self.loop).watch(self)
        self._arm("headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline_at is None:  # a kept-alive connection's next request
            self._arm("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.cycle is not None:  # a new cycle, holding the connection's own transport
            self.cycle.transport = self._head_held
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._deadline_at = None

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline_at = None
        _sweeper(self.loop).forget(self)
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._phase = phase
        self._deadline_at = self.loop.time() + self._timeouts[phase]

    def overdue(self, now: float) -> bool:
        return self._deadline_at is not None and self._deadline_at <= now

    def _timed_out(self) -> None:
        self._deadline_at = None
        if self.transport.is_closing():
            return
        logger.info(
            "closing a connection from %s: its request %s did not arrive in time",
            self.client,
            self._phase,
        )
        cycle = self.cycle
        if cycle is None or not cycle.response_started:
            path = self.scope.get("path", "") if self.scope else ""
            exc = RequestTimeout(
                f"the request {self._phase} did not arrive within "
                f"{self._timeout_of(self._phase):g} s"
            )
            body = error_problem(exc, error_style(path))
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\n"
                b"content-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n"
                b"connection: close\r\n\r\n" + body
            )
        if cycle is not None:
            # An application still waiting for the body hears that the client is gone, and
            # whatever it sends now goes nowhere.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def _timeout_of(self, phase: str) -> float:
        name = f"request_{'header' if phase == 'headers' else 'body'}_timeout_seconds"
        state = self.app_state.get("berth")
        # The lifespan has run before uvicorn accepts a connection; the defaults are a fallback.
        if state is None:
            default: float = ApiSettings.model_fields[name].default
            return default
        seconds: float = getattr(state.settings, name)
        return seconds


class _Sweeper:
    """Closes, every SWEEP_SECONDS, the connections of one event loop past their deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._watched: set[GuardedHttpToolsProtocol] = set()
        self._next: asyncio.TimerHandle | None = None

    def watch(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._watched.add(protocol)
        if self._next is None:
            self._next = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def forget(self, protocol: GuardedHttpToolsProtocol) -> None:
        self._watched.discard(protocol)

    def _sweep(self) -> None:
        self._next = None
        now = self._loop.time()
        for protocol in [p for p in self._watched if p.overdue(now)]:
            try:
                protocol._timed_out()
            except Exception:  # one connection's failure must not stop the sweeps
                logger.exception("closing a connection past its deadline failed")
        if self._watched:
            self._next = self._loop.call_later(SWEEP_SECONDS, self._sweep)


_SWEEPERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sweeper] = (
    weakref.WeakKeyDictionary()
)


def _sweeper(loop: asyncio.AbstractEventLoop) -> _Sweeper:
    sweeper = _SWEEPERS.get(loop)
    if sweeper is None:
        sweeper = _SWEEPERS[loop] = _Sweeper(loop)
    return sweeper


class HeadHeldTransport:
    """A response cycle's view of the connection that holds the response head back until the
    body's first write, and sends both in one.

    uvicorn writes the head when the application sends `http.response.start` and the body on
    `http.response.body`. An application that never sends a body (a HEAD request, a failure in
    between) must not leave the head unsent: the loop's next iteration sends whatever is held.
    """

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if self._held is None:
            if data.endswith(b"\r\n\r\n"):  # a head: its body usually follows in this step
                self._held = data
                self._loop.call_soon(self.flush)
                return
            self._transport.write(data)
            return
        held, self._held = self._held, None
        self._transport.write(held + data)

    def flush(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
