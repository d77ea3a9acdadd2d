"""A durable local spool for ledger entries that Redis could not take.

When the XADD of a served request fails, its entry is appended to a segment file on the spool
volume and fsynced before the response goes out, so a prediction that was answered is on disk
somewhere even while Redis is down. A replay loop moves the entries into the stream, in the order
they were spooled, once Redis answers again.

Every API process appends to a segment of its own and holds an exclusive flock on it. Replaying
takes the lock of a segment first, so a segment is replayed by one process only, and a segment
left by a process that died (its lock released by the kernel) is replayed by whichever process
gets there first. A segment is deleted only after all of its entries are in the stream; a crash
in between replays them again, which the worker's idempotent insert turns into no second row.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

SUFFIX = ".jsonl"


@dataclass
class ClaimedSegment:
    path: Path
    handle: IO[str]

    def entries(self) -> Iterator[dict[str, str]]:
        """The segment's entries in order; a torn last line (a crash mid-write) is skipped: its
        request was never answered, because the answer waits for the fsync."""
        self.handle.seek(0)
        for number, line in enumerate(self.handle, start=1):
            if not line.endswith("\n"):
                logger.warning("%s: skipping torn line %d", self.path.name, number)
                continue
            try:
                fields = json.loads(line)
            except ValueError:
                # only disk corruption writes a whole line that is not JSON; say so loudly
                logger.error("%s: line %d is not JSON, skipped: %r", self.path.name, number, line)
                continue
            yield {str(k): str(v) for k, v in fields.items()}

    def finish(self) -> None:
        """All entries are in the stream: the segment goes."""
        self.path.unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        self.handle.close()  # closing drops the flock


class LedgerSpool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._owner = f"{socket.gethostname()}-{os.getpid()}"
        self._lock = threading.Lock()
        self._current: IO[str] | None = None
        self._current_path: Path | None = None

    def append(self, fields: dict[str, str]) -> None:
        """Blocking (fsync): run it in a thread. Raises OSError if the entry is not on disk."""
        line = json.dumps(fields, separators=(",", ":")) + "\n"
        with self._lock:
            if self._current is None:
                self._open_segment()
            assert self._current is not None
            self._current.write(line)
            self._current.flush()
            os.fsync(self._current.fileno())

    def _open_segment(self) -> None:
        # The name starts with the creation time, so sorting names replays segments in order.
        path = self.directory / f"{time.time_ns():020d}-{self._owner}{SUFFIX}"
        handle = path.open("a+", encoding="utf-8")
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._current, self._current_path = handle, path
        # the new file's directory entry must survive a crash too
        directory = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        logger.warning("spooling ledger entries to %s until Redis answers again", path)

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def oldest_age_seconds(self) -> float:
        """Age of the oldest segment holding entries (its name starts with its creation time),
        0 when none does: how long the spool has been waiting for Redis."""
        for path in self.segments():
            if _size(path) == 0:  # empty, or replayed meanwhile
                continue
            created_ns = int(path.name.split("-", 1)[0])
            return max(0.0, time.time() - created_ns / 1e9)
        return 0.0

    def has_entries(self) -> bool:
        return any(_size(path) > 0 for path in self.segments())

    def count_entries(self) -> int:
        total = 0
        for path in self.segments():
            try:
                with path.open("rb") as handle:
                    total += sum(1 for line in handle if line.endswith(b"\n"))
            except FileNotFoundError:
                continue  # replayed meanwhile
        return total

    def claim(self) -> list[ClaimedSegment]:
        """Segments this process may replay now, oldest first, each locked until released.

        The segment this process is writing is closed first, so that entries spooled from now
        on go to a new one and the replayed one is complete.
        """
        with self._lock:
            if self._current is not None:
                self._current.close()
                self._current = self._current_path = None
        claimed = []
        for path in self.segments():
            try:
                handle = path.open("r", encoding="utf-8")
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()  # a live process is writing or replaying it
                continue
            if not path.exists():  # replayed and deleted between the glob and the lock
                handle.close()
                continue
            claimed.append(ClaimedSegment(path, handle))
        return claimed

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.close()
                self._current = self._current_path = None


def _size(path: Path) -> int:
    """A segment's size; 0 once it is gone (replayed into the stream since it was listed)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
