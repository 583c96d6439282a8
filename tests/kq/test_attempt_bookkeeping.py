"""The attempt bookkeeping without a broker: journal records, the solo gate, the counting rules."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from queue_engine.errors import Unavailable
from queue_engine.kq.attempt_book import RETRY_WRITE, PartitionAttempts
from queue_engine.kq.attempt_journal import PartitionRecord
from queue_engine.kq.solo_gate import SoloGate
from queue_engine.policy import Outcome


class _Journal:
    """A journal that acknowledges every record at once."""

    def __init__(self, written: list[PartitionRecord]) -> None:
        self.written = written

    def queue(self, record: PartitionRecord) -> Awaitable[None]:
        self.written.append(record)
        return _acked()

    async def prepare(self) -> None:
        """Always ready."""


async def _acked() -> None:
    """A journal write's acknowledgement that has come."""


def test_a_journal_record_round_trips_and_an_unreadable_one_is_ignored() -> None:
    record = PartitionRecord("m1", 1500, {7: 2, 9: 1})
    assert PartitionRecord.decode(record.encode()) == record
    assert PartitionRecord.decode(PartitionRecord("m1", None).encode()) == PartitionRecord("m1", None, {})
    assert PartitionRecord.decode(b"not json") is None
    assert PartitionRecord.decode(b'{"owner": "x"}') is None


async def test_counting_after_a_crash_pins_deaths_on_the_message_called_alone() -> None:
    written: list[PartitionRecord] = []
    write = _Journal(written)

    # The dead owner's lease covered offsets below 100; offset 5 died alone twice already.
    book = PartitionAttempts(0, "me", write, PartitionRecord("dead", 100, {5: 2}), span=10)
    assert book.first_attempt(5) == 3  # its recorded count + 1
    assert book.first_attempt(6) == 2  # a suspect without a record: maybe run once by the dead process
    assert book.first_attempt(150) == 1  # beyond the lease: never handed to a handler
    assert not book.exhausted(5, 3)
    assert await book.before_solo_call(5, 3)
    assert written[-1].attempts == {5: 3} and written[-1].lease == 100  # the suspects stay suspects
    assert book.exhausted(5, 3)  # if this call kills the process too, the next owner dead-letters it

    assert await book.before_solo_call(6, 2)
    await book.after_solo_call(6, 2, Outcome.success())
    assert 6 not in written[-1].attempts  # a bystander that finished is never counted again

    book.committed(100)
    assert not book.is_suspect(50) and book.first_attempt(101) == 1


async def test_a_clean_hand_over_counts_the_calls_in_progress_and_leaves_no_lease() -> None:
    written: list[PartitionRecord] = []
    write = _Journal(written)

    book = PartitionAttempts(0, "me", write, None, span=10)
    assert await book.cover(0, 3, asyncio.Event())
    assert written[-1].lease == 13 and book.covered(12) and not book.covered(13)
    book.calling[4] = 1
    book.failed(2, 1)
    await book.close()
    assert written[-1] == PartitionRecord("me", None, {2: 1, 4: 1})
    book.failed(3, 1)  # after the hand-over nothing is written any more
    await asyncio.sleep(0)
    assert written[-1] == PartitionRecord("me", None, {2: 1, 4: 1})


async def test_a_solo_call_waits_for_the_others_and_holds_new_ones_back() -> None:
    gate = SoloGate()
    await gate.enter()  # an ordinary call runs
    solo = asyncio.create_task(gate.enter_solo())
    await asyncio.sleep(0.01)
    assert not solo.done()  # waits for it
    ordinary = asyncio.create_task(gate.enter())
    await asyncio.sleep(0.01)
    assert not ordinary.done()  # a new ordinary call waits behind the suspect
    gate.leave()
    await asyncio.wait_for(solo, 1)
    await asyncio.sleep(0.01)
    assert not ordinary.done()  # still alone
    gate.leave_solo()
    await asyncio.wait_for(ordinary, 1)
    gate.leave()
    assert gate.running == 0 and not gate.held


class _HeldJournal:
    """A journal whose acknowledgements the test gives, one by one."""

    def __init__(self) -> None:
        self.written: list[PartitionRecord] = []
        self.acks: list[asyncio.Future[None]] = []

    def queue(self, record: PartitionRecord) -> Awaitable[None]:
        self.written.append(record)
        self.acks.append(asyncio.get_running_loop().create_future())
        return self.acks[-1]

    async def prepare(self) -> None:
        """Always ready."""


async def test_lease_writes_are_queued_by_the_intake_at_once_and_do_not_wait_for_each_other() -> None:
    journal = _HeldJournal()
    book = PartitionAttempts(0, "me", journal, None, span=100)
    leaving = asyncio.Event()
    book.received(10, leaving)
    # Queued in the intake's own step: a task would run after the workers the batch woke.
    assert [r.lease for r in journal.written] == [110]
    book.received(40, leaving)  # a quarter of the span more arrived, the first ack not back yet
    assert [r.lease for r in journal.written] == [110, 140]
    assert not book.covered(0)  # nothing acknowledged: no call may start
    journal.acks[0].set_result(None)
    await _turns()
    assert book.covered(109) and not book.covered(110)
    journal.acks[1].set_result(None)
    await _turns()
    assert book.covered(139) and not book.covered(140)


async def test_a_failed_lease_write_is_retried_by_the_newest_one_only() -> None:
    journal = _HeldJournal()
    book = PartitionAttempts(0, "me", journal, None, span=100)
    leaving = asyncio.Event()
    book.received(10, leaving)
    book.received(40, leaving)
    journal.acks[0].set_exception(Unavailable("broker down"))
    journal.acks[1].set_exception(Unavailable("broker down"))
    await _turns()
    assert book.problem is not None and not book.covered(0)
    covered = asyncio.create_task(book.cover(5, 40, leaving))
    await asyncio.sleep(RETRY_WRITE + 0.2)  # one retry, by the newest write alone
    assert [r.lease for r in journal.written] == [110, 140, 140]
    journal.acks[2].set_result(None)
    assert await asyncio.wait_for(covered, 1)
    assert book.problem is None and book.covered(139)


async def _turns() -> None:
    for _ in range(5):
        await asyncio.sleep(0)
