"""One partition's way into the attempts journal from the event loop (see attempt_book.py).

Event loop only. ``queue`` hands a record to the journal's producer at once (no worker thread,
no flush): a lease write costs one broker round trip and does not wait for the writes before
it. The ack comes from the journal's own poll thread, through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio

from queue_engine.errors import Unavailable
from queue_engine.kq.attempt_journal import AttemptJournal, PartitionRecord


class LoopJournalLink:
    def __init__(self, journal: AttemptJournal, partition: int, timeout: float) -> None:
        self._journal = journal
        self._partition = partition
        self._timeout = timeout

    def queue(self, record: PartitionRecord) -> asyncio.Future[None] | None:
        """Queue ``record`` now; its acknowledgement (fails with Unavailable if the write failed
        or was not acknowledged within the timeout). None until the journal topic is known to
        exist."""
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()
        late = f"attempts journal {self._journal.journal_topic}: no ack within {self._timeout}s"
        timer = loop.call_later(self._timeout, _settle, acked, late, None)

        def done(why: str | None) -> None:  # the journal's poll thread (or here, if refused at once)
            loop.call_soon_threadsafe(_settle, acked, why, timer)

        if not self._journal.write_soon(self._partition, record, done):
            timer.cancel()
            return None
        return acked

    async def prepare(self) -> None:
        """Check (and make) the journal topic and its producer, in a worker thread."""
        await asyncio.to_thread(self._journal.ensure)


def _settle(future: asyncio.Future[None], why: str | None, timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()
    if future.done():
        return
    if why is None:
        future.set_result(None)
    else:
        future.set_exception(Unavailable(why))
