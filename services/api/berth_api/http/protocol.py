"""The HTTP protocol of every API process: httptools', with a deadline on reading each request.

uvicorn closes a keep-alive connection that stays idle, but not one whose client opened it and
never finished a request: a connection that sends nothing, half a header or a trickle of body is
held for ever, and a few hundred of them hold a few hundred sockets and tasks. This protocol
gives every request a deadline for its headers (from the connection's first byte, or from the
request's first byte on a kept-alive connection) and one for its body (from the end of the
headers); a request that misses one is answered 408 and its connection closed.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from berth_api.errors import RequestTimeout, error_problem
from berth_api.http.endpoints import error_style
from berth_common.settings import ApiSettings

logger = logging.getLogger(__name__)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """httptools' protocol with deadlines for reading a request's headers and its body.

    The deadlines are the settings the lifespan put in the app state, read per connection, so
    that the protocol (which uvicorn builds from an import string in each worker process) needs
    no settings of its own.
    """

    _deadline: asyncio.TimerHandle | None = None
    _phase = "headers"

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:  # a kept-alive connection's next request
            self._arm("headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm("body")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(self._timeout_of(phase), self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
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
