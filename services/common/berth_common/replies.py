"""Redis replies as text: names and ids come back as bytes from a client made without
decode_responses, as str from one made with it, and Berth's code takes both."""

from __future__ import annotations


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
