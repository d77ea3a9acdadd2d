"""`python -m berth_api.ledger.feedback_upload --format csv|jsonl < FILE`: send labels in bulk.

What `make feedback FILE=labels.csv` runs in the api container: it reads the file from standard
input and posts it to the API's bulk feedback endpoint (`POST /v1/feedback`) on this container,
with the first of the container's API keys, in parts no larger than MAX_BODY_BYTES (a CSV part
repeats the header), then prints what was accepted and, for each line that was not, its line
number in the file and why. Exits 0 when every line was accepted, 1 when some were not, 2 when
a part could not be sent at all.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from berth_common.settings import ApiSettings, load_or_exit

CONTENT_TYPES = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
# Room left in each part for the header and the last line that tipped it over.
_MARGIN = 1024


@dataclass
class Part:
    """A body to send, for each of its line numbers the file's line number, and how many lines
    of feedback it holds (blank lines and the header left out)."""

    body: bytes
    lines: dict[int, int]
    rows: int


@dataclass
class Summary:
    lines: int = 0
    accepted: int = 0
    unvalidated: int = 0
    rejected: int = 0
    problems: list[tuple[int, str, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def render(self) -> str:
        out = [
            f"feedback: {self.lines:,} lines read, {self.accepted:,} accepted "
            f"({self.unvalidated:,} to be checked by the worker: their predictions were not "
            f"stored yet), {self.rejected:,} rejected"
        ]
        out += [f"  line {line}: {name}: {message}" for line, name, message in self.problems]
        if self.rejected > len(self.problems):
            out.append(f"  ... and {self.rejected - len(self.problems):,} more")
        out += [f"  not sent: {failure}" for failure in self.failures]
        return "\n".join(out)


def csv_parts(data: bytes, limit: int) -> list[Part]:
    text = data.decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        return [Part(data, {}, 0)]
    head = _csv_text([header])
    parts: list[Part] = []
    chunk, lines, size, chunk_line, rows = [head], {1: 1}, len(head), 1, 0
    for row in reader:
        encoded = _csv_text([row])
        if size + len(encoded) > limit - _MARGIN and rows:
            parts.append(Part("".join(chunk).encode(), lines, rows))
            chunk, lines, size, chunk_line, rows = [head], {1: 1}, len(head), 1, 0
        chunk_line += encoded.count("\n")
        lines[chunk_line] = reader.line_num
        chunk.append(encoded)
        size += len(encoded)
        rows += any(value.strip() for value in row)
    parts.append(Part("".join(chunk).encode(), lines, rows))
    return parts


def _csv_text(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def jsonl_parts(data: bytes, limit: int) -> list[Part]:
    parts: list[Part] = []
    chunk: list[bytes] = []
    lines: dict[int, int] = {}
    size = rows = 0
    for number, line in enumerate(data.split(b"\n"), start=1):
        if size + len(line) + 1 > limit - _MARGIN and rows:
            parts.append(Part(b"\n".join(chunk) + b"\n", lines, rows))
            chunk, lines, size, rows = [], {}, 0, 0
        chunk.append(line)
        lines[len(chunk)] = number
        size += len(line) + 1
        rows += bool(line.strip())
    parts.append(Part(b"\n".join(chunk) + b"\n", lines, rows))
    return parts


def upload(
    parts: Sequence[Part], url: str, content_type: str, key: str | None, timeout: float = 120.0
) -> Summary:
    summary = Summary()
    headers = {"Content-Type": content_type}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    for number, part in enumerate(parts, start=1):
        request = urllib.request.Request(  # noqa: S310 - a URL of this container
            f"{url.rstrip('/')}/v1/feedback", data=part.body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                _add_accepted(summary, json.load(response), part)
        except urllib.error.HTTPError as exc:
            body = _json(exc.read())
            if exc.code == 422 and "errors" in body:
                _add_refused(summary, body["errors"], part)
            else:
                summary.failures.append(
                    f"part {number} of {len(parts)}: HTTP {exc.code}: {body.get('detail', body)}"
                )
        except (urllib.error.URLError, OSError) as exc:
            summary.failures.append(f"part {number} of {len(parts)}: {exc}")
    summary.problems.sort()
    return summary


def _add_accepted(summary: Summary, body: dict[str, Any], part: Part) -> None:
    summary.lines += int(body["lines"])
    summary.accepted += int(body["accepted"])
    summary.unvalidated += int(body["unvalidated"])
    summary.rejected += int(body["rejected"])
    for problem in body["problems"]:
        line = part.lines.get(int(problem["line"]), int(problem["line"]))
        summary.problems.append((line, problem["field"], problem["message"]))


def _add_refused(summary: Summary, errors: list[dict[str, str]], part: Part) -> None:
    """A 422: no line of the part was accepted; its errors (the first of them) name
    "line N: field" each."""
    summary.lines += part.rows
    summary.rejected += part.rows
    for error in errors:
        where, _, name = error["field"].partition(": ")
        number = int(where.removeprefix("line ")) if where.startswith("line ") else 0
        summary.problems.append((part.lines.get(number, number), name, error["message"]))


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"detail": raw[:200].decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"detail": str(value)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m berth_api.ledger.feedback_upload", description=__doc__
    )
    parser.add_argument("--format", choices=sorted(CONTENT_TYPES), required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the API (this container)")
    args = parser.parse_args(argv)
    settings = load_or_exit(ApiSettings)
    data = sys.stdin.buffer.read()
    if not data.strip():
        print("feedback: nothing on standard input", file=sys.stderr)
        return 2
    split = csv_parts if args.format == "csv" else jsonl_parts
    try:
        parts = split(data, settings.max_body_bytes)
    except (UnicodeDecodeError, csv.Error) as exc:
        print(f"feedback: the file cannot be read as {args.format}: {exc}", file=sys.stderr)
        return 2
    keys = settings.api_key_list
    summary = upload(parts, args.url, CONTENT_TYPES[args.format], keys[0] if keys else None)
    print(summary.render())
    if summary.failures:
        return 2
    return 0 if summary.rejected == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
