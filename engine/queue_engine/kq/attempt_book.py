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
- Every record carries the partition's whole state and is queued in the same step that takes
  it (no await between), so records are queued in the order of their states; the journal's
  producer (idempotent) keeps that order, so the last record that lands is the newest state.
  Writes do not wait for each other's acks (pipelined), and a lease write is queued at once
  by the intake (not by a task, which would run after the workers the same batch woke):
  renewed each time a quarter of the span arrived, the lease keeps ahead of a fast partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from queue_engine.errors import QueueError, Unavailable
from queue_engine.kq.attempt_journal import PartitionRecord
from queue_engine.policy import Outcome, Verdict

log = logging.getLogger("queue_engine.kq.attempts")


class JournalLink(Protocol):
    """One partition's way into the attempts journal, from the event loop (journal_link.py)."""

    def queue(self, record: PartitionRecord) -> Awaitable[None] | None:
        """Queue ``record`` now, behind every record queued before it; its acknowledgement, to
        await (it raises QueueError if the write failed). None: the journal is not ready to
        queue (its topic is not known to exist): :meth:`prepare` it first."""

    async def prepare(self) -> None:
        """Check (and make) the journal topic, off the loop; raises QueueError if it cannot."""


Queued = tuple[int, Awaitable[None]]  # a record on its way: the lease it carries, its ack
RETRY_WRITE = 1.0  # seconds between tries of a journal write the broker refused


class PartitionAttempts:
    def __init__(
        self, number: int, owner: str, link: JournalLink, record: PartitionRecord | None, span: int
    ) -> None:
        self.number = number
        self.owner = owner
        self._link = link
        self._span = span
        self.known: dict[int, int] = dict(record.attempts) if record is not None else {}
        # A lease still set means its owner never handed the partition over cleanly.
        self.suspect_below: int | None = record.lease if record is not None else None
        self.calling: dict[int, int] = {}  # offset -> attempt of the calls in progress
        self.lease = 0  # offsets below are covered by an acknowledged record (read it, never set it)
        self._lease_wanted = 0  # the lease the next record carries
        self._lease_asked = 0  # the highest lease a lease write on its way will carry (at least)
        self._lease_writes = 0  # lease writes on their way (queued or about to be)
        self._lease_moved: asyncio.Future[None] | None = None  # woken whenever a lease write ends
        self._pending_writes: set[asyncio.Task[Any]] = set()
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

        Asks for a lease of ``max(offset, ahead) + span`` (``ahead``: the last offset received)
        once half of what was asked for is used, so the healthy path rarely waits.
        """
        if offset >= self._lease_asked - self._span // 2:
            self._extend(max(offset, ahead) + self._span, leaving)
        while offset >= self.lease:
            if leaving.is_set() or self._closed:
                return False
            if offset >= self._lease_asked or not self._lease_writes:
                # Nothing on its way covers it (the write that would have ended without an ack).
                self._extend(max(offset, ahead) + self._span, leaving)
            moved = self._lease_moved
            if moved is None:
                moved = self._lease_moved = asyncio.get_running_loop().create_future()
            left = asyncio.ensure_future(leaving.wait())
            either: list[asyncio.Future[Any]] = [moved, left]
            try:
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            finally:
                left.cancel()
        return True

    def received(self, last: int, leaving: asyncio.Event) -> None:
        """Intake, once per batch: ``last`` is the partition's last offset received. Extends the
        lease ahead of what arrives (not of what the handler reached), so on the healthy path the
        write is acknowledged before a handler call needs it and no call waits for it."""
        # Renewed after a quarter of the span arrived, so a whole fetched batch (POLL_BATCH, half
        # the span) landing on one partition at once still finds the lease ahead of it.
        if last >= self._lease_wanted - self._span * 3 // 4:
            self._extend(last + self._span, leaving)

    def _extend(self, lease: int, leaving: asyncio.Event) -> None:
        """Queue a lease write carrying at least ``lease`` now; its ack is awaited in a task of
        its own (nothing waits for it here, and it does not wait for the writes before it)."""
        self._lease_wanted = max(self._lease_wanted, lease)
        if self._closed or leaving.is_set():
            return
        self._lease_asked = max(self._lease_asked, self._lease_wanted)
        self._lease_writes += 1
        self._background(self._lease_write(leaving, self._lease_asked, self._queue_now()))

    async def _lease_write(self, leaving: asyncio.Event, asked: int, queued: Queued | None) -> None:
        """Wait for a lease write's ack; retry a failed one, unless a later one was asked for
        (it carries a newer state and retries itself): one retry at a time, not one per write."""
        try:
            while not (leaving.is_set() or self._closed):
                acked = await self._write(leaving, queued)
                queued = None
                if acked is not None:
                    self.lease = max(self.lease, acked)
                    return
                if self._lease_asked > asked:
                    return
                asked = self._lease_asked
        finally:
            self._lease_writes -= 1
            moved, self._lease_moved = self._lease_moved, None
            if moved is not None and not moved.done():
                moved.set_result(None)

    def _background(self, write: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(write)
        self._pending_writes.add(task)
        task.add_done_callback(self._pending_writes.discard)

    async def before_solo_call(self, offset: int, attempt: int) -> bool:
        """Record "offset starts attempt n" and wait for the ack; False if that failed (one try:
        the caller holds every other call of the process back meanwhile, so it retries later)."""
        self.known[offset] = attempt
        return await self._write(None) is not None

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
        if not self._closed:
            self._background(self._write(None, self._queue_now()))

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

    def _queue_now(self, closing: bool = False) -> Queued | None:
        """Queue the current state now (its state taken and queued in one step: records are
        queued in the order of their states); None if the journal is not ready for it."""
        lease = max(self.lease, self._lease_wanted)
        ack = self._link.queue(self.record(closing))
        return None if ack is None else (lease, ack)

    async def _queue(self, closing: bool = False) -> Queued | None:
        """Queue the current state, preparing the journal first if it is not ready; None if
        the partition was handed over meanwhile (the hand-over record must be the last)."""
        queued = self._queue_now(closing)
        if queued is None:
            await self._link.prepare()
            if self._closed and not closing:
                return None
            queued = self._queue_now(closing)  # (the state as it is now, after the wait)
            if queued is None:
                raise Unavailable("attempts journal: not ready to write after its topic was checked")
        return queued

    async def _write(self, leaving: asyncio.Event | None, queued: Queued | None = None) -> int | None:
        """Write the current state (or wait for ``queued``, a record queued already) and wait for
        its ack: the lease it carried, or None if it failed (then, with ``leaving``, after a pause
        of RETRY_WRITE, for the caller's retry)."""
        error: QueueError | None = None
        if queued is None:
            if self._closed:
                return None
            try:
                queued = await self._queue()
            except QueueError as exc:
                error = exc
        if queued is not None:
            lease, ack = queued
            try:
                await ack
            except QueueError as exc:
                error = exc
            else:
                self.problem = None
                return lease
        if error is None:  # handed over while the journal was prepared: nothing to write any more
            return None
        if self.problem is None:
            log.warning("partition %d: attempts journal write failed: %s", self.number, error)
        self.problem = f"attempts journal: {error}"
        if leaving is not None:
            await _nap(RETRY_WRITE, leaving)
        return None

    async def close(self) -> None:
        """A clean hand-over: no lease left behind, the calls in progress counted. Queued after
        every earlier record (nothing is queued once closed), so it is the last one to land."""
        self._closed = True
        try:
            queued = await self._queue(closing=True)
            assert queued is not None
            await queued[1]
        except QueueError as exc:
            log.warning("partition %d: attempts journal hand-over failed: %s", self.number, exc)


async def _nap(seconds: float, wake: asyncio.Event) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(wake.wait(), seconds)
