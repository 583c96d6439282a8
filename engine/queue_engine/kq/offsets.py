"""Which offset of a partition may be committed: never past a message still being handled."""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Offsets received from one partition, in order, and which of them are finished.

    Kafka commits "the next offset to read", so the committable offset is one past the highest
    offset below which every received message is finished. Offsets need not be contiguous
    (compaction, transaction markers): only the order of arrival matters.
    """

    def __init__(self) -> None:
        self._outstanding: deque[int] = deque()  # received, in offset order, not yet committable
        self._done: set[int] = set()
        self._last_received: int | None = None
        self.committable: int | None = None  # None until something finished

    def receive(self, offset: int) -> bool:
        """Record a new message; False for one already received (a re-fetch after pause)."""
        if self._last_received is not None and offset <= self._last_received:
            return False
        self._last_received = offset
        self._outstanding.append(offset)
        return True

    def finish(self, offset: int) -> int | None:
        """Mark ``offset`` finished; return the new committable offset if it moved."""
        return self.committable if self.release(offset) else None

    def release(self, offset: int) -> int:
        """Mark ``offset`` finished; how many offsets became committable (0: it did not move)."""
        outstanding = self._outstanding
        if not outstanding or outstanding[0] != offset:  # an earlier one is still unfinished
            self._done.add(offset)
            return 0
        outstanding.popleft()  # the usual case: the oldest finished (no set needed for it)
        head, count, done = offset, 1, self._done
        while outstanding and outstanding[0] in done:
            head = outstanding.popleft()
            done.discard(head)
            count += 1
        self.committable = head + 1
        return count

    @property
    def last_received(self) -> int:
        return -1 if self._last_received is None else self._last_received

    @property
    def uncommitted(self) -> int:
        """Messages received and held back from the commit (finished or not): the backlog."""
        return len(self._outstanding)

    @property
    def unfinished(self) -> int:
        return len(self._outstanding) - len(self._done)
