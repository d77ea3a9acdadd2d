"""JSON request bodies, read one way for every door.

orjson reads the common case fast. It refuses two things that are valid JSON text, integers
beyond 64 bits and escaped lone surrogates, and both must get a clear 4xx rather than a parse
error or, later, a 500: such bodies are read again by the standard library, big integers are kept
as the numbers they are (the row check refuses them where a feature cannot hold them), and a
lone surrogate, which is not Unicode text and which neither the cache key nor PostgreSQL can
encode, is refused here with the reason.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from berth_api.errors import MalformedRequest, UnsupportedMediaType


def load_json(body: bytes) -> Any:
    """The document in `body`; MalformedRequest says why there is none."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        document = json.loads(body, parse_constant=_non_finite)
    except RecursionError:
        raise MalformedRequest("the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MalformedRequest(f"the request body is not valid JSON: {exc}") from None
    _refuse_lone_surrogates(document)
    return document


def is_json(content_type: str) -> bool:
    """`application/json`, any `+json` type, or no type at all (curl's -d sends a form type,
    which is refused, but a client that says nothing is taken at its word)."""
    media = content_type.partition(";")[0].strip().lower()
    return media in ("", "application/json") or (
        media.startswith("application/") and media.endswith("+json")
    )


def require_json(content_type: str) -> None:
    if not is_json(content_type):
        media = content_type.partition(";")[0].strip()
        raise UnsupportedMediaType(
            f"content type {media[:100]!r} is not supported here; send application/json"
        )


def _non_finite(name: str) -> Any:
    # NaN and Infinity are not JSON, but clients written in Python send them: read as the floats
    # they stand for, they get the row check's answer, which names the field.
    return float(name)


def _refuse_lone_surrogates(document: Any) -> None:
    stack = [document]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                _check_text(key)
                stack.append(value)


def _check_text(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        position = exc.start
        raise MalformedRequest(
            f"a string in the body holds a lone UTF-16 surrogate "
            f"(\\u{ord(text[position]):04x} at character {position}); JSON strings must be "
            "Unicode text"
        ) from None
