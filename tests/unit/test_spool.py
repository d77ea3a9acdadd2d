from __future__ import annotations

from pathlib import Path

from berth_api.ledger.spool import LedgerSpool


def test_entries_survive_and_replay_in_order(tmp_path: Path) -> None:
    spool = LedgerSpool(tmp_path)
    for i in range(3):
        spool.append({"v": "1", "records": f"[{i}]"})
    assert spool.count_entries() == 3
    assert spool.has_entries()
    [segment] = spool.claim()
    assert [e["records"] for e in segment.entries()] == ["[0]", "[1]", "[2]"]
    # entries spooled while a replay runs go to a new segment, not the one being replayed
    spool.append({"v": "1", "records": "[3]"})
    segment.finish()
    assert spool.count_entries() == 1
    [later] = spool.claim()
    assert [e["records"] for e in later.entries()] == ["[3]"]
    later.finish()
    assert not spool.has_entries()
    assert spool.segments() == []


def test_a_live_writers_segment_is_not_claimed_by_another(tmp_path: Path) -> None:
    writer, other = LedgerSpool(tmp_path), LedgerSpool(tmp_path)
    writer.append({"v": "1", "records": "[1]"})
    assert other.claim() == []  # flocked by its writer
    writer.close()  # as when the writing process dies: the kernel drops its lock
    [orphan] = other.claim()
    assert [e["records"] for e in orphan.entries()] == ["[1]"]
    assert writer.claim() == []  # claimed by `other` meanwhile
    orphan.finish()


def test_torn_last_line_is_skipped(tmp_path: Path) -> None:
    spool = LedgerSpool(tmp_path)
    spool.append({"v": "1", "records": "[1]"})
    spool.close()
    [path] = spool.segments()
    with path.open("a") as handle:
        handle.write('{"v": "1", "rec')  # a crash mid-write; that request was never answered
    [segment] = LedgerSpool(tmp_path).claim()
    assert [e["records"] for e in segment.entries()] == ["[1]"]
    segment.release()


def test_a_segment_replayed_while_the_spool_is_looked_at_is_no_error(tmp_path: Path) -> None:
    """Another process may replay (and delete) a segment between its listing and its reading:
    CI once saw has_entries raise FileNotFoundError there."""

    class Racing(LedgerSpool):
        def segments(self) -> list[Path]:
            listed = super().segments()
            for path in listed:
                path.unlink()  # replayed by someone else just after the listing
            return listed

    spool = Racing(tmp_path)
    spool.append({"v": "1", "records": "[1]"})
    assert not spool.has_entries()
    assert spool.oldest_age_seconds() == 0.0
    assert spool.count_entries() == 0
    spool.close()
