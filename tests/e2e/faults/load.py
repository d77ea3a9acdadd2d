"""A steady prediction load, and the check of what the ledger stored for it.

Plain Python, no fixtures, so the same code can drive any Berth API it is pointed at (inside the
stack: http://api:8000). `Load` sends `plan.count` single-row requests at `plan.rate` requests per
second from a few threads, each with an `X-Request-ID` of its own, and records what each one got
back. `check_ledger` then compares those answers with the `predictions` table: every request that
got a 200 must be there exactly once and exactly as answered, and no other request may be.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
# The measured range of each iris feature, so that every class is predicted now and then.
FEATURE_RANGES = ((4.3, 7.9), (2.0, 4.4), (1.0, 6.9), (0.1, 2.5))
MODEL = {"name": "iris", "version": "1"}
CLASSES = frozenset({"setosa", "versicolor", "virginica"})
# Distinct rows per load: later uses of a row are cache hits, so both paths are recorded.
ROW_POOL_SIZE = 400
# How many examples of each kind of problem a report spells out.
EXAMPLES = 5

Row = tuple[float, float, float, float]


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How much load: `rate` requests per second in all, started over `duration` seconds."""

    rate: float = 40.0
    duration: float = 60.0
    threads: int = 6
    # Per request. Long enough that no request the API still answers is given up on: a request
    # the client abandoned but the API served would look like a record stored without a 200.
    request_timeout: float = 30.0
    # Requests not started this long after their slot (a thread held up by hung requests) are
    # not sent at all, so the load ends in bounded time whatever the API does.
    max_lateness: float = 20.0

    @property
    def count(self) -> int:
        return round(self.rate * self.duration)


@dataclass(frozen=True, slots=True)
class RequestResult:
    """What one request sent and got. Times are seconds since the load started."""

    request_id: str
    row: Row
    started: float
    finished: float
    status: int | None = None  # None: no HTTP answer at all
    error: str | None = None  # why it is not a usable 200: exception class or response excerpt
    label: str | None = None
    cached: bool | None = None
    version: str | None = None  # the model version that answered

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def kind(self) -> str:
        """'200', 'HTTP 503', 'ConnectError', ...: how the result is counted."""
        if self.status is None:
            return self.error or "no answer"
        if self.status == 200 and self.error is not None:
            return "200 with a bad body"
        return str(self.status) if self.status == 200 else f"HTTP {self.status}"


@dataclass(frozen=True, slots=True)
class LoadResults:
    plan: LoadPlan
    prefix: str
    results: tuple[RequestResult, ...]
    # Requests of the plan that were never sent (their slot passed by more than max_lateness).
    not_sent: int
    elapsed: float

    @property
    def ok(self) -> list[RequestResult]:
        return [result for result in self.results if result.ok]

    def kinds(self) -> Counter[str]:
        return Counter(result.kind for result in self.results)

    def longest_gap_without_200(self, start: float = 0.0, end: float | None = None) -> float:
        """Longest stretch of the load, in seconds, in which no request got its 200 back."""
        end = self.elapsed if end is None else end
        times = sorted(r.finished for r in self.results if r.ok and start <= r.finished <= end)
        edges = [start, *times, end]
        return max((b - a for a, b in itertools.pairwise(edges)), default=end - start)

    def latencies(self) -> tuple[float, float, float]:
        """Median, 99th percentile and largest time to a 200, in seconds."""
        times = sorted(r.finished - r.started for r in self.results if r.ok)
        if not times:
            return (0.0, 0.0, 0.0)
        return (
            times[len(times) // 2],
            times[min(len(times) - 1, len(times) * 99 // 100)],
            times[-1],
        )

    def served_between(self, start: float, end: float) -> int:
        """200s for requests started within [start, end]."""
        return sum(1 for r in self.results if r.ok and start <= r.started <= end)


def make_rows(rng: random.Random, size: int = ROW_POOL_SIZE) -> list[Row]:
    """Distinct iris-like rows with one decimal, as a client would send them."""
    rows: set[Row] = set()
    while len(rows) < size:
        a, b, c, d = (round(rng.uniform(low, high), 1) for low, high in FEATURE_RANGES)
        rows.add((a, b, c, d))
    return sorted(rows)


class Load:
    """Runs a LoadPlan in background threads; `with Load(...) as load:` ... `load.wait()`.

    Leaving the `with` block stops the load (requests not yet started are not sent) and joins
    the threads, so that a failing test never leaves load running behind it.
    """

    def __init__(
        self,
        api_url: str,
        plan: LoadPlan,
        *,
        name: str,
        seed: int = 0,
        on_result: Callable[[RequestResult], None] | None = None,
        versions: Collection[str] = (MODEL["version"],),
    ) -> None:
        self.plan = plan
        # the versions of the default model that may answer (more than one while it is switched)
        self._versions = frozenset(versions)
        # told of every result as it comes (from the load's threads): what follows a 200
        self._on_result = on_result
        self.prefix = f"fault-{name}-{uuid.uuid4().hex[:8]}-"
        self._api_url = api_url
        rng = random.Random(f"{name}:{seed}")
        pool = make_rows(rng)
        self._rows = [rng.choice(pool) for _ in range(plan.count)]
        self._lock = threading.Lock()
        self._next = 0
        self._not_sent = 0
        self._results: list[RequestResult] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0
        self._finished_at: float | None = None

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.plan.request_timeout + 5)

    def start(self) -> None:
        self._t0 = time.monotonic()
        for index in range(self.plan.threads):
            thread = threading.Thread(target=self._run, name=f"load-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def now(self) -> float:
        """Seconds since the load started, on the clock of the results."""
        return time.monotonic() - self._t0

    def sleep_until(self, moment: float) -> None:
        """Sleeps until `moment` seconds into the load."""
        time.sleep(max(0.0, moment - self.now()))

    def stop(self) -> None:
        """Sends no more requests: a load whose end is decided while it runs (`wait()` next)."""
        self._stop.set()

    def wait(self) -> LoadResults:
        """Waits for every planned request to be sent and answered; bounded by the plan."""
        limit = self.plan.duration + self.plan.max_lateness + self.plan.request_timeout + 10
        for thread in self._threads:
            thread.join(timeout=max(0.0, limit - self.now()))
        if any(thread.is_alive() for thread in self._threads):
            self._stop.set()
            raise AssertionError(f"load still running {limit:.0f} s after it started")
        with self._lock:
            results = tuple(sorted(self._results, key=lambda r: r.started))
            return LoadResults(self.plan, self.prefix, results, self._not_sent, self.now())

    def _take(self) -> int | None:
        with self._lock:
            index = self._next
            if index >= self.plan.count or self._stop.is_set():
                return None
            self._next += 1
            return index

    def _run(self) -> None:
        timeout = httpx.Timeout(self.plan.request_timeout, connect=5.0)
        with httpx.Client(base_url=self._api_url, timeout=timeout) as client:
            while (index := self._take()) is not None:
                due = index / self.plan.rate
                if self.now() - due > self.plan.max_lateness:
                    with self._lock:
                        self._not_sent += 1
                    continue
                self._stop.wait(max(0.0, due - self.now()))
                result = self._send(client, index)
                with self._lock:
                    self._results.append(result)
                if self._on_result is not None:
                    self._on_result(result)

    def _send(self, client: httpx.Client, index: int) -> RequestResult:
        request_id = f"{self.prefix}{index:06d}"
        row = self._rows[index]
        # Both request shapes of the default model, alternately: each is one row.
        body: dict[str, object]
        if index % 2:
            path, body = "/predict", {"features": list(row)}
        else:
            path, body = (
                "/v1/models/iris/predict",
                {"instances": [dict(zip(FEATURES, row, strict=True))]},
            )
        started = self.now()
        try:
            response = client.post(path, json=body, headers={"X-Request-ID": request_id})
        except httpx.HTTPError as exc:
            return RequestResult(request_id, row, started, self.now(), error=type(exc).__name__)
        finished = self.now()
        if response.status_code != 200:
            excerpt = response.text[:200]
            return RequestResult(request_id, row, started, finished, response.status_code, excerpt)
        try:
            label, cached, version = _answer(response, request_id, self._versions)
        except (ValueError, KeyError, TypeError, AssertionError) as exc:
            return RequestResult(request_id, row, started, finished, 200, f"bad 200: {exc!r}")
        return RequestResult(request_id, row, started, finished, 200, None, label, cached, version)


def _answer(
    response: httpx.Response, request_id: str, versions: Collection[str]
) -> tuple[str, bool, str]:
    """The label, cache flag and model version of a one-row 200, checked to be about this very
    request."""
    body = response.json()
    assert response.headers.get("X-Request-ID") == request_id, "X-Request-ID not echoed"
    assert body["request_id"] == request_id, f"request_id {body['request_id']!r}"
    model = body["model"]
    assert model["name"] == MODEL["name"], f"model {model!r}"
    assert model["version"] in versions, f"model {model!r}, expected a version of {versions}"
    [prediction] = body["predictions"]
    label, cached = prediction["label"], prediction["cached"]
    assert label in CLASSES, f"label {label!r}"
    assert isinstance(cached, bool), f"cached {cached!r}"
    return label, cached, model["version"]


@dataclass(frozen=True, slots=True)
class BatchResult:
    """A many-row request: what it sent and got. Times are on the clock it was sent with."""

    request_id: str
    rows: tuple[Row, ...]
    started: float
    finished: float
    status: int | None = None
    error: str | None = None
    labels: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


class Batches:
    """Sends `count` requests of many rows at once, each from a thread of its own: long requests
    to have in flight at a given moment (`start()`, then the fault, then `wait()`).
    """

    def __init__(
        self,
        api_url: str,
        rows: Sequence[Row],
        *,
        count: int,
        clock: Callable[[], float],
        timeout: float = 60.0,
    ) -> None:
        self.prefix = f"fault-batch-{uuid.uuid4().hex[:8]}-"
        self._api_url = api_url
        self._rows = tuple(rows)
        self._clock = clock
        self._timeout = timeout
        self._results: list[BatchResult] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._send, args=(i,), name=f"batch-{i}", daemon=True)
            for i in range(count)
        ]

    @property
    def request_ids(self) -> list[str]:
        return [f"{self.prefix}{index:03d}" for index in range(len(self._threads))]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wait(self) -> list[BatchResult]:
        for thread in self._threads:
            thread.join(timeout=self._timeout + 10)
        assert not any(thread.is_alive() for thread in self._threads), "batch requests hang"
        with self._lock:
            return sorted(self._results, key=lambda r: r.request_id)

    def _send(self, index: int) -> None:
        request_id = self.request_ids[index]
        body = {"instances": [list(row) for row in self._rows]}
        started = self._clock()
        try:
            with httpx.Client(base_url=self._api_url, timeout=self._timeout) as client:
                response = client.post(
                    "/v1/models/iris/predict", json=body, headers={"X-Request-ID": request_id}
                )
            if response.status_code != 200:
                result = BatchResult(
                    request_id,
                    self._rows,
                    started,
                    self._clock(),
                    response.status_code,
                    response.text[:200],
                )
            else:
                labels = tuple(p["label"] for p in response.json()["predictions"])
                result = BatchResult(
                    request_id, self._rows, started, self._clock(), 200, labels=labels
                )
        except httpx.HTTPError as exc:
            result = BatchResult(
                request_id, self._rows, started, self._clock(), error=type(exc).__name__
            )
        with self._lock:
            self._results.append(result)


def check_batch(engine: Engine, result: BatchResult) -> list[str]:
    """What is wrong with the stored rows of a many-row request: all of them after a 200, with
    the labels answered; none otherwise.
    """
    found = stored_rows(engine, result.request_id)
    if not result.ok:
        return (
            [f"{result.request_id} ({result.error}) has {len(found)} rows stored"] if found else []
        )
    problems = []
    if len(result.labels) != len(result.rows):
        problems.append(
            f"{result.request_id}: {len(result.labels)} labels for {len(result.rows)} rows"
        )
    indexes = sorted(row.row_index for row in found)
    if indexes != list(range(len(result.rows))):
        problems.append(
            f"{result.request_id}: {len(found)} rows stored for {len(result.rows)} served"
            f" ({len(set(indexes))} distinct row indexes)"
        )
    for row in found:
        if not 0 <= row.row_index < len(result.labels):
            continue
        sent = dict(zip(FEATURES, result.rows[row.row_index], strict=True))
        if row.features != sent or row.prediction != result.labels[row.row_index]:
            problems.append(f"{result.request_id} row {row.row_index} differs from the answer")
    return problems


# ---- the ledger ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredRow:
    request_id: str
    row_index: int
    model_name: str
    model_version: str
    features: Any
    prediction: Any
    probabilities: Any
    cached: Any


def stored_rows(engine: Engine, prefix: str) -> list[StoredRow]:
    """Every row of `predictions` whose request id starts with `prefix`."""
    with engine.connect() as connection:
        result = connection.execute(
            text(
                "SELECT request_id, row_index, model_name, model_version, features, prediction,"
                " probabilities, cached FROM predictions WHERE starts_with(request_id, :prefix)"
            ),
            {"prefix": prefix},
        )
        return [StoredRow(*row) for row in result]


def stored_count(engine: Engine, prefix: str) -> int:
    with engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM predictions WHERE starts_with(request_id, :prefix)"),
            {"prefix": prefix},
        ).scalar_one()
        return int(count)


def dead_letter_count(engine: Engine, prefix: str) -> int:
    """Dead letters whose raw payload mentions one of this load's request ids."""
    with engine.connect() as connection:
        count = connection.execute(
            text("SELECT count(*) FROM ledger_dead_letters WHERE strpos(payload, :prefix) > 0"),
            {"prefix": prefix},
        ).scalar_one()
        return int(count)


@dataclass(frozen=True, slots=True)
class LedgerReport:
    """What the table holds for a load, against what the load was answered."""

    sent: int
    not_sent: int
    ok: int
    kinds: dict[str, int]
    stored_rows: int
    stored_requests: int
    dead_letters: int
    missing: list[str] = field(default_factory=list)  # a 200 with no row
    unexpected: list[str] = field(default_factory=list)  # a row without a 200
    duplicates: list[str] = field(default_factory=list)  # a request with more than one row
    wrong: list[str] = field(default_factory=list)  # a row unlike what was answered
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(self.kinds.items()))
        return (
            f"sent {self.sent} (not sent {self.not_sent}) [{kinds}]; stored {self.stored_rows}"
            f" rows for {self.stored_requests} requests; missing {len(self.missing)},"
            f" stored without a 200 {len(self.unexpected)}, duplicated {len(self.duplicates)},"
            f" wrong {len(self.wrong)}, dead letters {self.dead_letters}"
        )


def check_ledger(
    engine: Engine, results: LoadResults, in_doubt: Collection[str] = ()
) -> LedgerReport:
    """Compares the stored rows of a load with the answers the load got; lists every problem.

    `in_doubt`: requests whose API died while answering them (the client got no answer from it);
    their record may have been appended first, so they may be stored, once, without a 200.
    """
    rows = stored_rows(engine, results.prefix)
    by_request: dict[str, list[StoredRow]] = {}
    for row in rows:
        by_request.setdefault(row.request_id, []).append(row)
    answered = {result.request_id: result for result in results.results}
    ok = {result.request_id: result for result in results.results if result.ok}

    missing = sorted(set(ok) - set(by_request))
    unexpected = sorted(set(by_request) - set(ok) - set(in_doubt))
    duplicates = sorted(rid for rid, found in by_request.items() if len(found) > 1)
    wrong: list[str] = []
    for request_id, found in sorted(by_request.items()):
        if request_id in ok:
            wrong.extend(f"{request_id}: {why}" for why in _row_problems(ok[request_id], found))
    dead = dead_letter_count(engine, results.prefix)

    problems = []
    if missing:
        problems.append(_listed(f"{len(missing)} request(s) got a 200 but are not stored", missing))
    if unexpected:
        described = [
            f"{rid} ({answered[rid].kind if rid in answered else 'never sent by this load'})"
            for rid in unexpected
        ]
        problems.append(
            _listed(f"{len(unexpected)} request(s) are stored without a 200", described)
        )
    if duplicates:
        counts = [f"{rid} ({len(by_request[rid])} rows)" for rid in duplicates]
        problems.append(_listed(f"{len(duplicates)} request(s) are stored more than once", counts))
    if wrong:
        problems.append(_listed(f"{len(wrong)} stored row(s) differ from the answer", wrong))
    if dead:
        problems.append(f"{dead} entries of this load went to ledger_dead_letters")
    return LedgerReport(
        sent=len(results.results),
        not_sent=results.not_sent,
        ok=len(ok),
        kinds=dict(results.kinds()),
        stored_rows=len(rows),
        stored_requests=len(by_request),
        dead_letters=dead,
        missing=missing,
        unexpected=unexpected,
        duplicates=duplicates,
        wrong=wrong,
        problems=problems,
    )


def _row_problems(answer: RequestResult, found: Sequence[StoredRow]) -> Iterator[str]:
    for row in found:
        if row.row_index != 0:
            yield f"row_index {row.row_index} for a one-row request"
        if (row.model_name, row.model_version) != (MODEL["name"], answer.version):
            yield f"model {row.model_name}/{row.model_version}, answered {answer.version}"
        if row.features != dict(zip(FEATURES, answer.row, strict=True)):
            yield f"features {json.dumps(row.features)}, sent {list(answer.row)}"
        if row.prediction != answer.label:
            yield f"prediction {row.prediction!r}, answered {answer.label!r}"
        if row.cached is not answer.cached:
            yield f"cached {row.cached!r}, answered {answer.cached!r}"
        if not _probabilities_ok(row.probabilities, answer.label):
            yield f"probabilities {json.dumps(row.probabilities)}"


def _probabilities_ok(probabilities: Any, label: str | None) -> bool:
    if not isinstance(probabilities, Mapping) or set(probabilities) != CLASSES:
        return False
    values = list(probabilities.values())
    if not all(isinstance(v, int | float) and 0 <= v <= 1 for v in values):
        return False
    return math.isclose(sum(values), 1.0, abs_tol=1e-6) and probabilities[label] == max(values)


def _listed(headline: str, items: Sequence[str]) -> str:
    shown = "; ".join(items[:EXAMPLES])
    more = f"; and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return f"{headline}: {shown}{more}"


# ---- waiting for the worker ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Backlog:
    """The consumer group's view of the stream: what is delivered but unacknowledged, and unread."""

    pending: int
    lag: int
    consumers: dict[str, int]  # consumer name -> entries pending on it

    @property
    def drained(self) -> bool:
        return self.pending == 0 and self.lag == 0


def backlog(client: redis.Redis, stream: str, group: str) -> Backlog | None:
    """The group's backlog, or None while Redis or the group cannot be read."""
    try:
        groups: list[dict[str, Any]] = client.xinfo_groups(stream)
        found = next((g for g in groups if _text(g["name"]) == group), None)
        if found is None:
            return None
        consumers: list[dict[str, Any]] = client.xinfo_consumers(stream, group)
        # Redis 7 reports the lag, unless deletions make it unknown (None): then count.
        lag = found.get("lag")
        if lag is None:
            after = f"({_text(found['last-delivered-id'])}"
            lag = len(client.xrange(stream, min=after, max="+"))
    except (redis.RedisError, OSError):
        return None
    return Backlog(
        pending=int(found["pending"]),
        lag=int(lag),
        consumers={_text(c["name"]): int(c["pending"]) for c in consumers},
    )


class BacklogSampler:
    """Samples the group's backlog (pending + unread) in a thread, on the clock of a load.

    `with BacklogSampler(read, load.now):` ... gives how far the worker fell behind during a
    fault and how soon after it the worker had caught up with the load again.
    """

    def __init__(
        self,
        read: Callable[[], Backlog | None],
        clock: Callable[[], float],
        every: float = 0.25,
    ) -> None:
        self._read = read
        self._clock = clock
        self._every = every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backlog-sampler", daemon=True)
        # (seconds into the load, pending + unread entries); None while unreadable
        self.samples: list[tuple[float, int | None]] = []

    def __enter__(self) -> BacklogSampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            state = self._read()
            sample = None if state is None else state.pending + state.lag
            self.samples.append((self._clock(), sample))
            self._stop.wait(self._every)

    def peak(self) -> int:
        return max((n for _, n in list(self.samples) if n is not None), default=0)

    def caught_up(self, after: float, threshold: int) -> float | None:
        """The first moment from `after` on when the backlog was at most `threshold`."""
        return next(
            (t for t, n in list(self.samples) if t >= after and n is not None and n <= threshold),
            None,
        )


@dataclass(frozen=True, slots=True)
class Drain:
    """How waiting for the worker ended: seconds from the start of the wait, and why."""

    seconds: float
    complete: bool  # every 200 of the load is stored and the group's backlog is empty
    stored: int
    reason: str


def wait_for_ledger(
    engine: Engine,
    client: redis.Redis,
    *,
    stream: str,
    group: str,
    results: LoadResults,
    timeout: float = 180.0,
    settle: float = 20.0,
) -> Drain:
    """Waits until the worker has stored every 200 of the load and the backlog is empty.

    Ends early, without failing, once the backlog has been empty and the stored count unchanged
    for `settle` seconds: records that never reached the stream cannot arrive any more, and the
    check that follows says which are missing. Also ends at `timeout`.
    """
    want = len(results.ok)
    started = time.monotonic()
    stored = -1
    still_since = started
    while True:
        now = time.monotonic()
        try:
            count = stored_count(engine, results.prefix)
        except SQLAlchemyError:
            count = -1
        state = backlog(client, stream, group)
        drained = state is not None and state.drained
        if count != stored:
            stored, still_since = count, now
        if drained and stored >= want:
            return Drain(now - started, True, stored, "every 200 stored, backlog empty")
        if drained and now - still_since >= settle:
            reason = f"backlog empty, {stored} of {want} stored and unchanged for {settle:g} s"
            return Drain(now - started, False, stored, reason)
        if now - started >= timeout:
            reason = f"timed out: {stored} of {want} stored, backlog {state}"
            return Drain(now - started, False, stored, reason)
        time.sleep(0.5)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
