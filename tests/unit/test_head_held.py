"""A response's head and body leave in one write; a head without a body still leaves."""

from __future__ import annotations

import asyncio
from typing import cast

from berth_api.http.protocol import HeadHeldTransport

HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> str:
        return f"extra {name}"


def held(recording: RecordingTransport) -> HeadHeldTransport:
    return HeadHeldTransport(cast(asyncio.Transport, recording))


def test_head_and_body_are_one_write() -> None:
    async def run() -> list[bytes]:
        recording = RecordingTransport()
        transport = held(recording)
        transport.write(HEAD)
        assert recording.writes == []
        transport.write(b"{}")
        await asyncio.sleep(0)  # the flush scheduled for the head finds nothing left
        return recording.writes

    assert asyncio.run(run()) == [HEAD + b"{}"]


def test_a_head_without_a_body_is_sent_on_the_next_loop_iteration() -> None:
    async def run() -> list[bytes]:
        recording = RecordingTransport()
        held(recording).write(HEAD)
        await asyncio.sleep(0)
        return recording.writes

    assert asyncio.run(run()) == [HEAD]


def test_closing_sends_the_held_head_first_and_later_writes_pass_through() -> None:
    async def run() -> RecordingTransport:
        recording = RecordingTransport()
        transport = held(recording)
        transport.write(b"chunk that is not a head")
        transport.write(HEAD)
        transport.close()
        assert transport.get_extra_info("peername") == "extra peername"
        await asyncio.sleep(0)
        return recording

    recording = asyncio.run(run())
    assert recording.writes == [b"chunk that is not a head", HEAD]
    assert recording.closed


def test_one_transport_carries_a_connections_responses_one_after_another() -> None:
    """The protocol makes one per connection: a kept-alive connection's responses each leave in
    one write, in order, a bodiless one included."""

    async def run() -> list[bytes]:
        recording = RecordingTransport()
        transport = held(recording)
        transport.write(HEAD)
        transport.write(b"{}")
        transport.write(HEAD)  # a HEAD request's answer: no body follows
        await asyncio.sleep(0)
        transport.write(HEAD)
        transport.write(b"[]")
        await asyncio.sleep(0)
        return recording.writes

    assert asyncio.run(run()) == [HEAD + b"{}", HEAD, HEAD + b"[]"]
