"""Issue 4: every prediction whose response was sent ends up in `predictions` exactly once, through
any single fault below, with the API still serving predictions throughout.

Each test runs a steady load of distinct one-row requests (load.py) against the stack of
`make test-faults`, injects one fault while it runs, waits for the worker to drain the ledger, and
holds the table to the promise: every request answered 200 is stored exactly once and exactly as
answered, nothing is stored for a request that was not answered 200, and requests fail only where
the fault makes serving them impossible. The figures of each run are printed (pytest -s).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import httpx

from tests.e2e.faults.conftest import Container, FaultStack, Ledger, TableLock
from tests.e2e.faults.load import (
    BacklogSampler,
    Batches,
    Load,
    LoadPlan,
    LoadResults,
    check_batch,
    check_ledger,
    make_rows,
    wait_for_ledger,
)
from tests.e2e.stack import wait_until

RATE = 40.0  # requests per second, every test
# Seconds into the load at which each fault starts: the load is steady by then.
FAULT_AT = 15.0
# The longest the API may go without answering a 200 while a fault does not touch it.
MAX_SERVING_GAP_SECONDS = 5.0
# Requests that fail for a fault must have been sent while it lasted, give or take this.
WINDOW_MARGIN_SECONDS = 2.0
# A backlog this small is the normal flow of a worker keeping up with the load.
CAUGHT_UP_BACKLOG = 10
# How long entries pile up on the stream, unread, before a worker is killed with its batch.
PILE_UP_SECONDS = 3.0
# How long Redis stays dead after its SIGKILL.
REDIS_DOWN_SECONDS = 3.0
# Long requests sent just before the API gets SIGTERM.
IN_FLIGHT_BATCHES = 4
# What a client sees of an API process that is not there: refused, reset, closed.
TRANSPORT_ERRORS = frozenset(
    {"ConnectError", "ConnectTimeout", "ReadError", "WriteError", "RemoteProtocolError"}
)


@dataclass(frozen=True, slots=True)
class Window:
    """When the fault began and when the hurt service was back, in seconds into the load."""

    start: float
    end: float

    def covers(self, started: float, finished: float) -> bool:
        """Whether a request overlapped the fault, give or take WINDOW_MARGIN_SECONDS."""
        return (
            started <= self.end + WINDOW_MARGIN_SECONDS
            and finished >= self.start - WINDOW_MARGIN_SECONDS
        )


def test_worker_killed_with_a_batch_in_hand_then_started(
    healthy_stack: FaultStack, api_url: str, ledger: Ledger
) -> None:
    stack = healthy_stack
    [worker] = stack.running("worker")

    with scenario(api_url, ledger, "worker-kill", duration=60) as (load, sampler):
        load.sleep_until(FAULT_AT)
        start = load.now()
        held, held_requests = kill_holding_a_batch(stack, ledger, load, worker)
        # Down for a few seconds while the API goes on appending to the stream.
        time.sleep(5)
        stack.compose("start", "worker")
        end = load.now()
        # Restarted under the same consumer name, it first re-reads what it held.
        recovered = seconds_until(
            lambda: not set(held) & set(ledger.pending_ids(worker.consumer)), timeout=120
        )
        print(f"  the entries it held were acknowledged {recovered:.1f} s after its start")
        results = finish("worker SIGKILL + start", load, sampler, Window(start, end), ledger)

    # Stored: the load's check covers every 200, and these were all answered 200.
    assert held_requests <= {r.request_id for r in results.ok}, held_requests


def test_second_worker_takes_over_a_killed_workers_entries(
    healthy_stack: FaultStack, api_url: str, ledger: Ledger
) -> None:
    stack = healthy_stack
    stack.compose(
        "up", "--detach", "--no-deps", "--no-recreate", "--scale", "worker=2", "--wait", "worker"
    )
    workers = stack.running("worker")
    assert len(workers) == 2, workers
    # The newer replica dies: scaling back to one (after the test) removes it.
    survivor, victim = workers
    wait_until(
        lambda: {survivor.consumer, victim.consumer} <= ledger.consumers(),
        what="both workers to join the consumer group",
        timeout=60,
    )

    with scenario(api_url, ledger, "worker-takeover", duration=60) as (load, sampler):
        load.sleep_until(FAULT_AT)
        start = load.now()
        _, orphaned_requests = kill_holding_a_batch(stack, ledger, load, victim)
        # Nobody starts it again: the survivor claims its entries once they have been idle for
        # WORKER_CLAIM_IDLE_MS (5 s in .env.faults).
        taken = seconds_until(lambda: not ledger.pending_ids(victim.consumer), timeout=120)
        end = load.now()
        print(f"  {survivor.name} had claimed them all {taken:.1f} s after the kill")
        results = finish(
            "2 workers, one SIGKILLed for good", load, sampler, Window(start, end), ledger
        )

    assert stack.state(victim) == "exited", "the killed worker came back by itself"
    assert orphaned_requests <= {r.request_id for r in results.ok}, orphaned_requests
    # It has nothing pending any more; drop it so that the group lists live consumers only.
    ledger.redis.xgroup_delconsumer(ledger.stream, ledger.group, victim.consumer)


def test_redis_restarted_by_compose(
    healthy_stack: FaultStack, api_url: str, ledger: Ledger
) -> None:
    stack = healthy_stack

    with scenario(api_url, ledger, "redis-restart", duration=60) as (load, sampler):
        load.sleep_until(FAULT_AT)
        start = load.now()
        # --no-deps: restart Redis alone, not the services it depends on (none today).
        stack.compose("restart", "--no-deps", "redis")
        wait_until(ledger.redis_up, what="Redis to answer", timeout=60)
        end = load.now()
        finish("redis restart (compose)", load, sampler, Window(start, end), ledger)


def test_redis_killed_then_started(healthy_stack: FaultStack, api_url: str, ledger: Ledger) -> None:
    stack = healthy_stack
    [server] = stack.running("redis")

    with scenario(api_url, ledger, "redis-kill", duration=60) as (load, sampler):
        load.sleep_until(FAULT_AT)
        start = load.now()
        stack.kill(server, "KILL")
        # Down for a few seconds: the API goes on answering all the while.
        time.sleep(REDIS_DOWN_SECONDS)
        stack.compose("start", "redis")
        wait_until(ledger.redis_up, what="Redis to answer", timeout=60)
        end = load.now()
        finish("redis SIGKILL + start", load, sampler, Window(start, end), ledger)


def test_postgres_down_for_a_minute(
    healthy_stack: FaultStack, api_url: str, ledger: Ledger
) -> None:
    stack = healthy_stack

    with scenario(api_url, ledger, "postgres-down", duration=90) as (load, sampler):
        load.sleep_until(10)
        start = load.now()
        stack.compose("stop", "postgres")
        stopped = load.now()
        load.sleep_until(start + 60)
        owed_at = load.now()
        state = ledger.backlog()
        assert state is not None
        waiting = ledger.owed_request_ids()
        print(
            f"\n  after 60 s without PostgreSQL: {state.pending} entries pending,"
            f" {state.lag} not read yet"
        )
        stack.compose("start", "postgres")
        wait_until(ledger.database_up, what="PostgreSQL to answer", timeout=120)
        end = load.now()
        results = finish("postgres stopped 60 s", load, sampler, Window(start, end), ledger)

    # Every request answered while the database was down was still owed when it came back:
    # delivered and unacknowledged, or not read yet. Fewer would mean entries acked unwritten.
    owed = {r.request_id for r in results.ok if stopped <= r.finished <= owed_at}
    assert owed
    assert owed <= waiting, (state, len(owed), len(owed - waiting))


def test_api_restarted_with_sigterm(
    healthy_stack: FaultStack, api_url: str, api: httpx.Client, ledger: Ledger
) -> None:
    stack = healthy_stack
    [server] = stack.running("api")
    # Requests of MAX_BATCH_ROWS rows take long enough to be in flight when SIGTERM arrives.
    heavy_rows = make_rows(random.Random("in-flight"), size=1000)

    with scenario(api_url, ledger, "api-restart", duration=60) as (load, sampler):
        in_flight = Batches(api_url, heavy_rows, count=IN_FLIGHT_BATCHES, clock=load.now)
        load.sleep_until(FAULT_AT)
        in_flight.start()
        # the signal goes as soon as the API is at work on one of them: its body read, its
        # idempotency claim held and not yet answered (not merely queued in the listen backlog,
        # which SIGTERM closes). Waiting until every one was claimed let all of them finish
        # first on a fast day: they take about 0.2 s.
        wait_until(
            lambda: ledger.working_on(in_flight.request_ids) > 0,
            what="the API to be at work on an in-flight request",
            timeout=20,
            every=0.005,
        )
        start = load.now()
        # What `docker compose restart api` does, with the moment of the signal known: SIGTERM
        # to tini, which hands it to uvicorn; uvicorn stops accepting, finishes, exits.
        stack.kill(server, "TERM")
        wait_until(lambda: stack.state(server) != "running", what="the API to exit", timeout=60)
        exited = load.now()
        stack.compose("start", "api")
        wait_until(lambda: ready(api), what="the API to be ready again", timeout=180)
        end = load.now()
        batches = in_flight.wait()
        results = finish(
            "api SIGTERM + start",
            load,
            sampler,
            Window(start, end),
            ledger,
            excused=TRANSPORT_ERRORS | {"HTTP 503"},
            api_interrupted=True,
        )

    print(
        f"  exited {exited - start:.1f} s after SIGTERM; {IN_FLIGHT_BATCHES} requests of"
        f" {len(heavy_rows)} rows in flight at SIGTERM: "
        + ", ".join(f"{b.status or b.error} after {b.finished - b.started:.2f} s" for b in batches)
    )
    problems = [problem for batch in batches for problem in check_batch(ledger.db, batch)]
    assert not problems, "\n".join(problems)
    assert all(b.started < start for b in batches)
    finished_in_flight = [b for b in batches if b.ok and b.finished > start]
    assert finished_in_flight, "no request in flight at SIGTERM was finished with a 200"
    assert results.served_between(end, results.elapsed) > 0, "nothing served after the restart"


# ---- the steps every scenario shares ---------------------------------------------------------


@contextmanager
def scenario(
    api_url: str, ledger: Ledger, name: str, *, duration: float
) -> Iterator[tuple[Load, BacklogSampler]]:
    """A load of `duration` seconds at RATE, with the ledger's backlog sampled meanwhile."""
    load = Load(api_url, LoadPlan(rate=RATE, duration=duration), name=name)
    with load, BacklogSampler(ledger.backlog, load.now) as sampler:
        yield load, sampler


def kill_holding_a_batch(
    stack: FaultStack,
    ledger: Ledger,
    load: Load,
    victim: Container,
    *,
    min_batch: int = 20,
    rounds: int = 4,
    # a batch with requests their clients named is stored by one statement that begins WITH
    statements: tuple[str, ...] = ("INSERT", "WITH"),
) -> tuple[list[str], set[str]]:
    """SIGKILLs the worker `victim` while it holds a batch it has read but not stored.

    A table lock makes every INSERT wait: the worker blocks with a batch in hand, and the stream
    fills up behind it for PILE_UP_SECONDS. Then a second lock is queued behind the worker's
    INSERT and the first released: the worker commits that batch, reads what piled up as its
    next one, and blocks on the second lock with it. Repeated (another worker may read the pile
    first) until the victim holds at least `min_batch` entries or `rounds` are done. Returns the
    stream ids it held when it died, and the request ids recorded in them. `statements`: what
    the worker may block in: its INSERT, which for requests their clients named begins WITH
    (the writer's checked insert), and for a batch of feedback alone a SELECT ... FOR UPDATE.
    """

    def blocked() -> bool:
        return any(ledger.waiting_for_lock(statement) for statement in statements)

    locks = [TableLock(ledger.db)]
    try:
        locks[0].acquire()
        wait_until(
            lambda: ledger.pending_on(victim.consumer) > 0 and blocked(),
            what=f"{victim.name} to block in its INSERT with a batch",
            timeout=20,
        )
        for _ in range(rounds):
            time.sleep(PILE_UP_SECONDS)
            before = set(ledger.pending_ids(victim.consumer))
            locks.append(hand_over(ledger, locks[-1]))
            wait_until(
                partial(holds_new_batch, ledger, victim.consumer, before, blocked),
                what=f"{victim.name} to block in its INSERT with its next batch",
                timeout=20,
            )
            if ledger.pending_on(victim.consumer) >= min_batch:
                break
        stack.kill(victim, "KILL")
        held = ledger.pending_ids(victim.consumer)
        # Read now: the worker trims entries from the stream once they are acknowledged.
        requests = ledger.request_ids_of(held)
    finally:
        for lock in locks:
            lock.close()
    print(
        f"\n  killed {victim.name} at {load.now():.1f} s holding {len(held)} unacknowledged"
        f" entries ({len(requests)} requests)"
    )
    assert held, f"{victim.name} held no entries when it was killed"
    # (one entry may hold the records of several requests that shared a Redis round trip)
    assert ledger.present(held) == len(held), "entries held by the dead worker vanished"
    assert len(requests) >= len(held) - len(ledger.feedback_entries_of(held))
    return held, requests


def holds_new_batch(
    ledger: Ledger, consumer: str, before: set[str], blocked: Callable[[], bool]
) -> bool:
    """Whether `consumer` holds entries besides `before`, while its statement waits for a lock."""
    return bool(set(ledger.pending_ids(consumer)) - before) and blocked()


def hand_over(ledger: Ledger, held: TableLock) -> TableLock:
    """A new lock, queued behind the INSERTs waiting for `held` and granted once they commit."""
    new = TableLock(ledger.db)
    failed: list[BaseException] = []

    def acquire() -> None:
        try:
            new.acquire()
        except BaseException as exc:  # reported by the test thread
            failed.append(exc)

    waiter = threading.Thread(target=acquire, name="table-lock", daemon=True)
    waiter.start()
    try:
        try:
            wait_until(
                lambda: ledger.waiting_for_lock("LOCK TABLE"),
                what="the next lock to be queued",
                timeout=10,
            )
        finally:
            held.release()
            # The lock's own lock_timeout ends the wait first.
            waiter.join(timeout=TableLock.TIMEOUT_SECONDS + 10)
        if waiter.is_alive() or failed:
            raise AssertionError(f"the next table lock was not granted: {failed}")
    except BaseException:
        if not waiter.is_alive():
            new.close()
        raise
    return new


def finish(
    name: str,
    load: Load,
    sampler: BacklogSampler,
    window: Window,
    ledger: Ledger,
    *,
    excused: Collection[str] = (),
    api_interrupted: bool = False,
    excused_during: Window | None = None,
    api_killed: bool = False,
) -> LoadResults:
    """Waits for the load and the ledger, prints the figures, and holds them to the promise.

    `excused`: the kinds of failure (load.RequestResult.kind) the fault makes unavoidable, for
    requests that overlapped it (or `excused_during`, when that is narrower than the fault); any
    other failure, or one outside the fault, is a problem. `api_killed`: an API died with those
    requests in hand, so they may be stored, once, though their client got no answer.
    """
    excusing = excused_during or window
    results = load.wait()
    drain = wait_for_ledger(
        ledger.db, ledger.redis, stream=ledger.stream, group=ledger.group, results=results
    )
    excused_failures = {
        r.request_id
        for r in results.results
        if not r.ok and r.kind in excused and excusing.covers(r.started, r.finished)
    }
    report = check_ledger(ledger.db, results, in_doubt=excused_failures if api_killed else ())
    caught_up = sampler.caught_up(window.end, CAUGHT_UP_BACKLOG)
    catch_up = "never" if caught_up is None else f"{caught_up - window.end:.1f} s"
    gap = results.longest_gap_without_200()
    p50, p99, worst = results.latencies()
    print(
        f"\n[{name}] N={len(results.results)} requests at {results.plan.rate:g}/s over"
        f" {results.elapsed:.0f} s; fault from {window.start:.1f} s to {window.end:.1f} s"
        f" ({window.end - window.start:.1f} s)\n"
        f"  {report.summary()}\n"
        f"  200s for requests sent during the fault: "
        f"{results.served_between(window.start, window.end)};"
        f" longest stretch without a 200: {gap:.1f} s; time to a 200: median {p50 * 1000:.0f} ms,"
        f" p99 {p99 * 1000:.0f} ms, max {worst * 1000:.0f} ms\n"
        f"  backlog peak {sampler.peak()} entries; back under {CAUGHT_UP_BACKLOG}"
        f" {catch_up} after the fault ended\n"
        f"  drain: {drain.reason}, {drain.seconds:.1f} s after the last answer;"
        f" total {load.now():.1f} s"
    )
    failures = list(report.problems)
    if results.not_sent:
        failures.append(f"{results.not_sent} planned requests were never sent (client held up)")
    unexcused = [r for r in results.results if not r.ok and r.request_id not in excused_failures]
    if unexcused:
        examples = "; ".join(
            f"{r.request_id} at {r.started:.1f}-{r.finished:.1f} s: {r.kind} {r.error or ''}"[:200]
            for r in unexcused[:5]
        )
        failures.append(
            f"{len(unexcused)} request(s) failed that this fault does not excuse"
            f" (excused: {sorted(excused) or 'none'}): {examples}"
        )
    if not api_interrupted and gap > MAX_SERVING_GAP_SECONDS:
        failures.append(f"the API answered no 200 for {gap:.1f} s")
    if not drain.complete:
        failures.append(f"the ledger did not drain: {drain.reason}")
    assert not failures, "\n".join(failures)
    return results


def seconds_until(check: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    wait_until(check, what="the condition", timeout=timeout)
    return time.monotonic() - started


def ready(api: httpx.Client) -> bool:
    try:
        return api.get("/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
