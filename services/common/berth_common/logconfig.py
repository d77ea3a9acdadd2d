"""Logging for every Berth process: stdlib logging, configured once, JSON on request.

A request id set in `request_id_var` appears in every line logged while that request is handled,
so one grep finds everything a request did across the API's log.

A logged value can come from a client (a path, a header): in text lines every control character
and line separator is written as an escape (`\x0a`), so that nothing a client sends can end a
line and forge the next. JSON lines escape them by being JSON.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# More of what is being handled, for every line logged meanwhile (JSON lines carry each as a key):
# the model and version of a request, the batch and stream ids a worker stores.
log_fields_var: ContextVar[Mapping[str, object] | None] = ContextVar("log_fields", default=None)


def add_log_fields(**fields: object) -> None:
    """Adds to the fields of the request or batch being handled (reset by whoever began it)."""
    log_fields_var.set({**(log_fields_var.get() or {}), **fields})


@contextmanager
def log_fields(**fields: object) -> Iterator[None]:
    token = log_fields_var.set({**(log_fields_var.get() or {}), **fields})
    try:
        yield
    finally:
        log_fields_var.reset(token)


_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get() or "-"
        for key, value in (log_fields_var.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


# C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class TextFormatter(logging.Formatter):
    """One line per record: the message with its control characters escaped. A traceback,
    written by the code itself and not by a client, follows on lines of its own."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line; extra= fields are kept as keys."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "INFO", fmt: str = "text") -> None:
    """Installs one stderr handler on the root logger; calling it again replaces it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # uvicorn's records go through our handler; its access log is replaced by berth.access,
    # which carries the request id (and without a handler uvicorn skips formatting it at all)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
