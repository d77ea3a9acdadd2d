"""`make profile`'s reading of py-spy's stacks: waits are not counted as the API's CPU."""

from __future__ import annotations

from pathlib import Path

from bench.profile import is_idle, parse, summary

PROCESS = 'process 7:"python -m berth_api"'
LOOP = [PROCESS, "_run_module_as_main (<frozen runpy>:198)", "run (uvicorn/main.py:580)"]
THREAD = [PROCESS, "_bootstrap (/usr/local/lib/python3.11/threading.py:995)"]
POOL = "/usr/local/lib/python3.11/concurrent/futures/thread.py"
STACKS = [
    ([*LOOP, "answer (berth_api/http/dispatch.py:52)"], 30),
    ([*LOOP, "encode_served (berth_common/ledger.py:187)"], 10),
    ([*THREAD, f"_worker ({POOL}:81)"], 500),
    (
        [
            *THREAD,
            "always_pong (uvicorn/supervisors/multiprocess.py:64)",
            "Connection._recv (/usr/local/lib/python3.11/multiprocessing/connection.py:395)",
        ],
        400,
    ),
    ([*THREAD, f"_worker ({POOL}:83)", "CompiledPredictor.predict (compiled.py:196)"], 20),
    ([PROCESS], 40),
]


def test_a_thread_waiting_is_told_from_one_running() -> None:
    assert is_idle(f"_worker ({POOL}:81)")
    assert is_idle("Condition.wait (/usr/local/lib/python3.11/threading.py:327)")
    assert is_idle("_PollLikeSelector.select (/usr/local/lib/python3.11/selectors.py:415)")
    assert is_idle("Connection._recv (/usr/local/lib/python3.11/multiprocessing/connection.py:395)")
    # work that runs in those threads, and functions that merely share a name, are not waits
    assert not is_idle("CompiledPredictor.predict (berth_api/serving/compiled.py:196)")
    assert not is_idle("Event.wait (/usr/local/lib/python3.11/asyncio/locks.py:213)")
    assert not is_idle("select (berth_api/ledger/reads.py:40)")
    assert not is_idle(PROCESS)


def test_the_shares_count_running_threads_only(tmp_path: Path) -> None:
    path = tmp_path / "profile.txt"
    path.write_text("".join(f"{';'.join(frames)} {count}\n" for frames, count in STACKS))
    lines = summary(parse(path))
    # 30 + 10 + 20 in Python, 40 with no Python frame; the 900 samples of waits left out
    assert lines[0] == (
        "100 samples of running API threads, 40 of them with no Python frame "
        "(900 more of threads waiting, left out)"
    )
    own = lines[lines.index("## self (the frame on top)") + 1 :]
    assert own[0] == " 30.0 %  answer (berth_api/http/dispatch.py:52)"
    assert " 20.0 %  CompiledPredictor.predict (compiled.py:196)" in own
    assert not any("thread.py" in line or "connection.py" in line for line in own[:4])
