"""Ground truth is stored exactly once through a worker kill and a Redis restart.

Feedback takes the path predictions take (the stream, or the spool while Redis cannot take it;
a worker stores it and acknowledges after the commit), so it must keep their promise: every label
the API accepted (202) is in the ledger once, as a value of its row or as a duplicate of the
value before it, in the order it was sent, while predictions are served and stored as always.
"""

from __future__ import annotations

import time

from tests.e2e.faults.conftest import FaultStack, Ledger
from tests.e2e.faults.feedback_load import FeedbackSender, check_feedback, wait_for_feedback
from tests.e2e.faults.load import BacklogSampler, Load, LoadPlan
from tests.e2e.faults.test_faults import RATE, Window, finish, kill_holding_a_batch
from tests.e2e.stack import wait_until

WORKER_KILL_AT = 15.0
REDIS_RESTART_AT = 45.0


def test_feedback_exactly_once_through_a_worker_kill_and_a_redis_restart(
    healthy_stack: FaultStack, api_url: str, ledger: Ledger
) -> None:
    stack = healthy_stack
    [worker] = stack.running("worker")
    plan = LoadPlan(rate=RATE, duration=75)
    # every answer is handed to the sender, which sends the request's labels
    load = Load(api_url, plan, name="feedback", on_result=lambda result: sender.offer(result))
    with (
        FeedbackSender(api_url, clock=load.now) as sender,
        load,
        BacklogSampler(ledger.backlog, load.now) as sampler,
    ):
        load.sleep_until(WORKER_KILL_AT)
        start = load.now()
        # the worker dies holding predictions and feedback; a batch of feedback alone blocks in
        # its SELECT ... FOR UPDATE of the predictions it is about
        held, _ = kill_holding_a_batch(
            stack, ledger, load, worker, statements=("INSERT", "WITH", "SELECT")
        )
        held_feedback = ledger.feedback_entries_of(held)
        time.sleep(5)
        stack.compose("start", "worker")
        print(f"  of its {len(held)} entries, {len(held_feedback)} held feedback")
        load.sleep_until(REDIS_RESTART_AT)
        stack.compose("restart", "--no-deps", "redis")
        wait_until(ledger.redis_up, what="Redis to answer", timeout=60)
        end = load.now()
        results = finish(
            "feedback: worker SIGKILL + start, then redis restart",
            load,
            sampler,
            Window(start, end),
            ledger,
        )
        sent = sender.wait()
    waited, complete = wait_for_feedback(ledger.db, results.prefix, sent)
    report = check_feedback(ledger.db, results.prefix, sent)
    during = sum(1 for s in sent if start <= s.started <= end)
    print(
        f"  {report.summary()}\n"
        f"  {during} labels sent during the faults; all in the tables {waited:.1f} s after the"
        " predictions were"
    )
    assert complete, f"feedback still missing after {waited:.0f} s: {report.summary()}"
    assert not report.problems, "\n".join(report.problems)
    assert held_feedback, "the killed worker held no feedback: the scenario tested nothing"
    assert report.unvalidated > 0, "no label arrived before its prediction was stored"
    assert report.duplicates > 0
    assert report.stored > report.rows, "no correction was stored"
