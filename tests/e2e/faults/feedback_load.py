"""Ground truth sent for a prediction load as its answers come back, and the check of what the
ledger kept of it.

`FeedbackSender` is handed every result of a `Load` (its `on_result`). For each request answered
200 it sends, one step after the other, a label (at once for some, so that it often arrives
before its prediction is stored; a few seconds later for others), for some the same label again
(a duplicate), and for some later a different label (a correction); a fifth of the labels go in
bulk uploads (JSON lines) that gather for a second. It records what it sent and what it got.
`check_feedback` then holds the tables to it: for each row, `feedback` holds exactly the values
sent that differ from the value before them, in the order sent, and `feedback_duplicates` the
others, every value once, whatever happened to the services meanwhile.
"""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import Engine, text

from tests.e2e.faults.load import CLASSES, EXAMPLES, RequestResult

LABELS = sorted(CLASSES)
# How long uploads gather lines before they are sent.
BULK_EVERY_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class Sent:
    """One label sent: for which request, how, and what came back (times on the load's clock)."""

    request_id: str
    actual: str
    step: str  # first, again (the same value), correction
    source: str  # api or bulk
    started: float
    finished: float
    status: int | None
    error: str | None = None
    feedback_id: str | None = None  # one request's feedback only: bulk answers give counts
    validated: bool | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 202 and self.error is None


@dataclass(order=True)
class _Step:
    due: float
    request_id: str = field(compare=False)
    steps: list[tuple[str, str, str, float]] = field(compare=False)  # step, actual, source, gap


class FeedbackSender:
    """`with FeedbackSender(api_url, clock) as sender:` ... pass `sender.offer` as a Load's
    `on_result` ... `sender.wait()`."""

    def __init__(self, api_url: str, clock: Callable[[], float], *, threads: int = 4) -> None:
        self._api_url = api_url
        self._clock = clock
        self._lock = threading.Condition()
        self._queue: list[_Step] = []
        self._in_flight = 0
        self._bulk: list[tuple[_Step, str, str]] = []  # step, its label, step name
        self._closing = False
        self._threads = [
            threading.Thread(target=self._run, name=f"feedback-{i}", daemon=True)
            for i in range(threads)
        ]
        self._bulk_thread = threading.Thread(target=self._run_bulk, name="bulk", daemon=True)
        self.sent: list[Sent] = []

    def __enter__(self) -> FeedbackSender:
        for thread in (*self._threads, self._bulk_thread):
            thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        with self._lock:
            self._closing = True
            self._queue.clear()
            self._lock.notify_all()
        for thread in (*self._threads, self._bulk_thread):
            thread.join(timeout=60)

    def offer(self, result: RequestResult) -> None:
        """Plans the feedback of a request answered 200 (called from the load's threads)."""
        if not result.ok or result.label is None:
            return
        rng = random.Random(result.request_id)
        first = rng.choice(LABELS)
        source = "bulk" if rng.random() < 0.2 else "api"
        steps = [("first", first, source, 0.0)]
        if rng.random() < 0.3:
            steps.append(("again", first, "api" if rng.random() < 0.7 else "bulk", 0.0))
        if rng.random() < 0.25:
            other = rng.choice([label for label in LABELS if label != first])
            steps.append(("correction", other, "api", rng.uniform(0.5, 4.0)))
        delay = 0.0 if rng.random() < 0.3 else rng.uniform(0.2, 3.0)
        with self._lock:
            heapq.heappush(self._queue, _Step(self._clock() + delay, result.request_id, steps))
            self._lock.notify()

    def wait(self, timeout: float = 120.0) -> list[Sent]:
        """Waits until every planned label was sent and answered."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue or self._in_flight or self._bulk:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "feedback still being sent"
                self._lock.wait(min(remaining, 0.5))
            return sorted(self.sent, key=lambda s: s.started)

    def _next(self) -> _Step | None:
        with self._lock:
            while not self._closing:
                if self._queue and self._queue[0].due <= self._clock():
                    self._in_flight += 1
                    return heapq.heappop(self._queue)
                wait = self._queue[0].due - self._clock() if self._queue else 0.5
                self._lock.wait(max(0.01, min(wait, 0.5)))
            return None

    def _then(self, step: _Step) -> None:
        """The request's next step, once this one is answered."""
        with self._lock:
            self._in_flight -= 1
            del step.steps[0]
            if step.steps:
                step.due = self._clock() + step.steps[0][3]
                heapq.heappush(self._queue, step)
            self._lock.notify_all()

    def _run(self) -> None:
        with httpx.Client(base_url=self._api_url, timeout=30) as client:
            while (step := self._next()) is not None:
                name, actual, source, _ = step.steps[0]
                if source == "bulk":
                    with self._lock:
                        self._bulk.append((step, actual, name))
                        self._in_flight -= 1
                    continue
                self._record(self._send_one(client, step.request_id, actual, name))
                self._then(step)

    def _send_one(self, client: httpx.Client, request_id: str, actual: str, name: str) -> Sent:
        started = self._clock()
        status: int | None = None
        error: str | None = None
        body: dict[str, Any] = {}
        try:
            response = client.post(
                f"/v1/predictions/{request_id}/feedback", json={"actuals": [actual]}
            )
            status = response.status_code
            if status == 202:
                body = response.json()
            else:
                error = response.text[:200]
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        return Sent(
            request_id,
            actual,
            name,
            "api",
            started,
            self._clock(),
            status,
            error,
            feedback_id=body["rows"][0]["feedback_id"] if body else None,
            validated=body.get("validated"),
        )

    def _run_bulk(self) -> None:
        with httpx.Client(base_url=self._api_url, timeout=30) as client:
            while True:
                time.sleep(BULK_EVERY_SECONDS)
                with self._lock:
                    batch, self._bulk = self._bulk, []
                    closing = self._closing
                    self._in_flight += len(batch)
                if batch:
                    for sent in self._send_bulk(client, batch):
                        self._record(sent)
                    for step, _, _ in batch:
                        self._then(step)
                elif closing:
                    return

    def _send_bulk(
        self, client: httpx.Client, batch: list[tuple[_Step, str, str]]
    ) -> Iterator[Sent]:
        lines = [
            json.dumps({"request_id": step.request_id, "row_index": 0, "actual": actual})
            for step, actual, _ in batch
        ]
        started = self._clock()
        status: int | None
        error: str | None = None
        try:
            response = client.post(
                "/v1/feedback",
                content=("\n".join(lines) + "\n").encode(),
                headers={"content-type": "application/x-ndjson"},
            )
            status = response.status_code
            body = response.json() if status == 202 else {}
            if status != 202:
                error = response.text[:200]
            elif body.get("rejected"):
                error = f"lines rejected: {body['problems'][:EXAMPLES]}"
        except httpx.HTTPError as exc:
            status, error = None, type(exc).__name__
        finished = self._clock()
        for step, actual, name in batch:
            yield Sent(step.request_id, actual, name, "bulk", started, finished, status, error)

    def _record(self, sent: Sent) -> None:
        with self._lock:
            self.sent.append(sent)


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    sent: int
    accepted: int
    unvalidated: int
    rows: int
    stored: int
    duplicates: int
    problems: list[str]

    def summary(self) -> str:
        return (
            f"feedback: {self.sent} sent for {self.rows} rows, {self.accepted} accepted"
            f" ({self.unvalidated} before the prediction was stored); stored {self.stored},"
            f" duplicates {self.duplicates}; problems {len(self.problems)}"
        )


def expected_history(sent: list[Sent]) -> tuple[list[str], int]:
    """For one row, in the order sent: the values kept (each differs from the one before) and
    how many repeated the one before."""
    kept: list[str] = []
    repeated = 0
    for item in sorted(sent, key=lambda s: s.started):
        if kept and kept[-1] == item.actual:
            repeated += 1
        else:
            kept.append(item.actual)
    return kept, repeated


def stored_feedback(engine: Engine, prefix: str) -> dict[str, tuple[list[Any], list[Any]]]:
    """Per request of the load: its row's stored values (feedback_id, actual, source) by
    received_at, and its duplicates."""
    found: dict[str, tuple[list[Any], list[Any]]] = {}
    with engine.connect() as connection:
        for table, slot in (("feedback", 0), ("feedback_duplicates", 1)):
            rows = connection.execute(
                text(
                    f"SELECT request_id, row_index, feedback_id, actual, source FROM {table}"
                    " WHERE starts_with(request_id, :prefix)"
                    " ORDER BY request_id, received_at, feedback_id"
                ),
                {"prefix": prefix},
            )
            for request_id, row_index, feedback_id, actual, source in rows:
                found.setdefault(request_id, ([], []))[slot].append(
                    (row_index, feedback_id, actual, source)
                )
    return found


def feedback_stored_count(engine: Engine, prefix: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT (SELECT count(*) FROM feedback WHERE starts_with(request_id, :p))"
                    " + (SELECT count(*) FROM feedback_duplicates"
                    " WHERE starts_with(request_id, :p))"
                ),
                {"p": prefix},
            ).scalar_one()
        )


def check_feedback(engine: Engine, prefix: str, sent: list[Sent]) -> FeedbackReport:
    """Every label accepted is in the tables once: the values that change the row's actual in
    `feedback`, in the order sent, the others in `feedback_duplicates`; nothing else is there."""
    problems: list[str] = []
    refused = [s for s in sent if not s.accepted]
    if refused:
        shown = "; ".join(f"{s.request_id} {s.source}: {s.status} {s.error}" for s in refused[:5])
        problems.append(f"{len(refused)} labels were not accepted: {shown}")
    by_request: dict[str, list[Sent]] = {}
    for item in sent:
        if item.accepted:
            by_request.setdefault(item.request_id, []).append(item)
    stored = stored_feedback(engine, prefix)
    wrong: list[str] = []
    for request_id, items in sorted(by_request.items()):
        kept, repeated = expected_history(items)
        values, duplicates = stored.get(request_id, ([], []))
        got = [actual for _, _, actual, _ in values]
        if got != kept or len(duplicates) != repeated:
            wrong.append(
                f"{request_id}: sent {[(s.step, s.actual) for s in items]}, stored {got} and"
                f" {len(duplicates)} duplicates"
            )
        ids = {feedback_id for _, feedback_id, _, _ in values + duplicates}
        lost = [s.feedback_id for s in items if s.feedback_id and s.feedback_id not in ids]
        if lost:
            wrong.append(f"{request_id}: feedback ids not stored: {lost}")
        if any(row_index != 0 for row_index, *_ in values + duplicates):
            wrong.append(f"{request_id}: a row index other than 0")
    if wrong:
        shown = "; ".join(wrong[:EXAMPLES])
        problems.append(f"{len(wrong)} rows' feedback differs from what was sent: {shown}")
    strangers = sorted(set(stored) - set(by_request))
    if strangers:
        problems.append(f"feedback stored for requests that got none: {strangers[:EXAMPLES]}")
    return FeedbackReport(
        sent=len(sent),
        accepted=sum(s.accepted for s in sent),
        unvalidated=sum(s.validated is False for s in sent),
        rows=len(by_request),
        stored=sum(len(values) for values, _ in stored.values()),
        duplicates=sum(len(duplicates) for _, duplicates in stored.values()),
        problems=problems,
    )


def wait_for_feedback(
    engine: Engine, prefix: str, sent: list[Sent], *, timeout: float = 180.0, settle: float = 20.0
) -> tuple[float, bool]:
    """Waits until every accepted label is in the tables (or nothing has changed for `settle`
    seconds, or `timeout`); returns the seconds waited and whether all arrived."""
    want = sum(s.accepted for s in sent)
    started = time.monotonic()
    last, since = -1, started
    while True:
        now = time.monotonic()
        count = feedback_stored_count(engine, prefix)
        if count >= want:
            return now - started, True
        if count != last:
            last, since = count, now
        if now - since >= settle or now - started >= timeout:
            return now - started, False
        time.sleep(0.5)
