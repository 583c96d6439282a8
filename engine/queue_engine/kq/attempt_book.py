"""Attempt bookkeeping of one partition in one assignment, kept in the attempts journal.

Event loop only. What it guarantees (with :mod:`attempt_journal` and :mod:`solo_gate`):

- No handler call starts on an offset the journal does not cover: either the partition's lease
  (written ahead in steps of ``span`` offsets, so the healthy path writes one record per about
  ``span / 2`` messages, off the message path) or the offset's own record.
- A lease left behind by a process that died (no clean hand-over) makes the offsets below it
  suspects: each is called alone (see :mod:`solo_gate`), after writing "offset O starts attempt
  n". A suspect with no record of its own gets attempt 2: the dead process may have run it once.
- So a message whose call kills the process every time reaches ``maxAttempts`` recorded
  attempts after ``maxAttempts`` deaths (the first one pinned on it by being a suspect; with
  ``maxAttempts`` 1 it needs one death alone, so 2), and is then dead-lettered without another
  call. A failed attempt (RETRY, timeout) is recorded as it happens, a clean revoke or stop
  records the calls in progress: counts survive rebalances too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from queue_engine.errors import QueueError
from queue_engine.kq.attempt_journal import PartitionRecord
from queue_engine.policy import Outcome, Verdict

log = logging.getLogger("queue_engine.kq.attempts")

Write = Callable[[PartitionRecord], Awaitable[None]]
RETRY_WRITE = 1.0  # seconds between tries of a journal write the broker refused


class PartitionAttempts:
    def __init__(
        self, number: int, owner: str, write: Write, record: PartitionRecord | None, span: int
    ) -> None:
        self.number = number
        self.owner = owner
        self._write_record = write
        self._span = span
        self.known: dict[int, int] = dict(record.attempts) if record is not None else {}
        # A lease still set means its owner never handed the partition over cleanly.
        self.suspect_below: int | None = record.lease if record is not None else None
        self.calling: dict[int, int] = {}  # offset -> attempt of the calls in progress
        self.lease = 0  # offsets below are covered by an acknowledged record (read it, never set it)
        self._lease_wanted = 0
        self._extending: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._pending_writes: set[asyncio.Task[bool]] = set()
        self.problem: str | None = None
        self._closed = False  # handed over: a late write must not leave a lease behind

    # ------------------------------------------------------------ per message

    def first_attempt(self, offset: int) -> int:
        known = self.known.get(offset)
        if known is not None:
            return known + 1
        return 2 if self.is_suspect(offset) else 1

    def is_suspect(self, offset: int) -> bool:
        return self.suspect_below is not None and offset < self.suspect_below

    def exhausted(self, offset: int, max_attempts: int) -> bool:
        """Recorded attempts used up (the process died in the last one): dead-letter, no call."""
        return self.known.get(offset, 0) >= max_attempts

    def covered(self, offset: int) -> bool:
        return offset < self.lease

    async def cover(self, offset: int, ahead: int, leaving: asyncio.Event) -> bool:
        """Wait until ``offset`` is covered by the lease; False if the partition is leaving first.

        Extends the lease to ``max(offset, ahead) + span`` (``ahead``: the last offset received),
        in the background once half of it is used, so the healthy path rarely waits.
        """
        if offset >= self.lease - self._span // 2 and self._extending is None:
            self._lease_wanted = max(offset, ahead) + self._span
            self._extending = asyncio.create_task(self._extend(leaving))
        while offset >= self.lease:
            extending = self._extending
            if extending is None:
                self._lease_wanted = max(offset, ahead) + self._span
                extending = self._extending = asyncio.create_task(self._extend(leaving))
            left = asyncio.ensure_future(leaving.wait())
            try:
                await asyncio.wait([extending, left], return_when=asyncio.FIRST_COMPLETED)
            finally:
                left.cancel()
            if leaving.is_set():
                return False
        return True

    def received(self, last: int, leaving: asyncio.Event) -> None:
        """Intake, once per batch: ``last`` is the partition's last offset received. Extends the
        lease ahead of what arrives (not of what the handler reached), so on the healthy path the
        write is acknowledged before a handler call needs it and no call waits for it."""
        # Renewed after a quarter of the span arrived, so a whole fetched batch (POLL_BATCH, half
        # the span) landing on one partition at once still finds the lease ahead of it.
        if last >= self._lease_wanted - self._span * 3 // 4 and not self._closed:
            self._lease_wanted = last + self._span
            if self._extending is None:
                self._extending = asyncio.create_task(self._extend(leaving))

    async def _extend(self, leaving: asyncio.Event) -> None:
        try:
            while not (leaving.is_set() or self._closed):
                wanted = self._lease_wanted
                if await self._write(leaving):
                    self.lease = max(self.lease, wanted)
                    break
        finally:
            self._extending = None
        # More arrived during the write: the next one goes out now, as a new task, so a call
        # waiting in cover() (for this task) wakes up with this write's lease in place.
        if self._lease_wanted > self.lease and not (leaving.is_set() or self._closed):
            self._extending = asyncio.create_task(self._extend(leaving))

    async def before_solo_call(self, offset: int, attempt: int) -> bool:
        """Record "offset starts attempt n" and wait for the ack; False if that failed (one try:
        the caller holds every other call of the process back meanwhile, so it retries later)."""
        self.known[offset] = attempt
        return await self._write(None)

    async def after_solo_call(self, offset: int, attempt: int, outcome: Outcome) -> None:
        """Record how a suspect's call ended before anything else runs: a success is forgotten
        (a later death is not its), a RETRY keeps the attempt, no call at all (app down) undoes it."""
        if not outcome.attempted:
            if attempt > 1:
                self.known[offset] = attempt - 1
            else:
                self.known.pop(offset, None)
        elif outcome.verdict is not Verdict.RETRY:
            self.known.pop(offset, None)
        await self._write(None)  # one try: if it fails, the next write carries this too

    def failed(self, offset: int, attempt: int) -> None:
        """An attempt ended in RETRY: record it without waiting (the retry waits a backoff anyway)."""
        self.known[offset] = attempt
        task = asyncio.create_task(self._write(None))
        self._pending_writes.add(task)
        task.add_done_callback(self._pending_writes.discard)

    def abandon(self) -> None:
        """The partition is lost (another member may own it): never write for it again."""
        self._closed = True

    def finished(self, offset: int) -> None:
        self.known.pop(offset, None)

    def committed(self, committable: int) -> None:
        """Everything below ``committable`` is done: forget it; suspects may all be resolved."""
        if self.known:
            for offset in [o for o in self.known if o < committable]:
                del self.known[offset]
        if self.suspect_below is not None and committable >= self.suspect_below:
            self.suspect_below = None

    # ------------------------------------------------------------ journal

    def record(self, closing: bool = False) -> PartitionRecord:
        attempts = dict(self.known)
        if closing:  # a call in progress has started: it counts for the next owner
            for offset, attempt in self.calling.items():
                attempts[offset] = max(attempt, attempts.get(offset, 0))
            lease = self.suspect_below  # unresolved suspects stay suspects
        else:
            lease = max(self.lease, self._lease_wanted, self.suspect_below or 0)
        return PartitionRecord(self.owner, lease, attempts)

    async def _write(self, leaving: asyncio.Event | None) -> bool:
        """Write the current state (serialised: the newest write always carries the newest state)."""
        async with self._write_lock:
            if self._closed:
                return False
            try:
                await self._write_record(self.record())
            except QueueError as exc:
                if self.problem is None:
                    log.warning("partition %d: attempts journal write failed: %s", self.number, exc)
                self.problem = f"attempts journal: {exc}"
                if leaving is not None:
                    await _nap(RETRY_WRITE, leaving)
                return False
        self.problem = None
        return True

    async def close(self) -> None:
        """A clean hand-over: no lease left behind, the calls in progress counted."""
        self._closed = True
        async with self._write_lock:  # after the writes in progress, so this one is the last
            try:
                await self._write_record(self.record(closing=True))
            except QueueError as exc:
                log.warning("partition %d: attempts journal hand-over failed: %s", self.number, exc)


async def _nap(seconds: float, wake: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
