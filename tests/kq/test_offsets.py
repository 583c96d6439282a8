"""The commit rule on its own: one past the highest offset below which everything finished."""

from __future__ import annotations

from queue_engine.kq.offsets import OffsetTracker


def test_commit_point_waits_for_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    for offset in range(5):
        assert tracker.receive(offset)
    assert tracker.finish(1) is None  # 0 still running
    assert tracker.finish(2) is None
    assert tracker.committable is None
    assert tracker.finish(0) == 3  # 0, 1, 2 finished: commit 3
    assert tracker.finish(4) is None  # 3 still running
    assert tracker.finish(3) == 5
    assert tracker.uncommitted == 0


def test_gaps_in_offsets_are_fine_and_refetches_are_ignored() -> None:
    tracker = OffsetTracker()
    assert tracker.receive(10) and tracker.receive(13)  # 11, 12: compacted away or markers
    assert not tracker.receive(13) and not tracker.receive(5)  # already seen
    assert tracker.uncommitted == 2 and tracker.unfinished == 2
    assert tracker.finish(13) is None
    assert tracker.unfinished == 1
    assert tracker.finish(10) == 14
