"""Deleting the other copies of a settled job (its siblings), so that a job is reserved once.

Nothing here decides whether a job runs: that is Redis's record (see
:mod:`~queue_engine.dq.records`), and a sibling that escapes deletion is deleted on sight by
the claim. This saves the work, and keeps the standbys (see :mod:`~queue_engine.dq.producer`)
from being reserved at all. Guarantees:

- After a success, the delivered copy and the copies this consumer holds waiting for it (its
  followers) are deleted at once, the job's other recorded copies within ``STANDBY_WINDOW``
  (they are due later); the deletes for one node go out in one call
  (:meth:`~queue_engine.dq.node_io.AsyncNodeConnection.delete_soon`). Our reservations are
  deleted by id on their own sockets; a recorded copy only where it still carries this job's
  id (:func:`~queue_engine.dq.node_io.delete_copy`).
- After a bury, the recorded copies other than the kept one and our followers (which bury or
  delete themselves) are deleted.
- A recorded copy that could not be deleted (reserved elsewhere, its node down) is remembered
  for ``SWEEP_WINDOW`` seconds: Redis may come back empty, without the done marker that would
  stop it, so :meth:`Siblings.sweep` deletes it before the consumer takes jobs again.
- A job done before its producer recorded where the copies went: the record is read again
  after the ``RECORD_RETRIES`` pauses, and the copies deleted then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from redis.exceptions import RedisError

from queue_engine import metrics
from queue_engine.dq.held import Held
from queue_engine.dq.node_io import AsyncNodeConnection
from queue_engine.dq.records import Copy, JobRecords

log = logging.getLogger(__name__)

SWEEP_WINDOW = 30.0  # seconds a settled job's undeletable copies are remembered for a sweep
# A job done a moment after it was published may beat the producer's record of its copies:
# the record is read again after these pauses, to delete the standbys then.
RECORD_RETRIES = (0.2, 0.5, 1.0, 2.0)
MAX_FOLLOWUPS = 1000  # jobs waiting for their record at once, at most
# The standbys of a job done are deleted within this many seconds, together with those of the
# other jobs done meanwhile: one write per node for many jobs. They are due seconds later.
STANDBY_WINDOW = 0.02


class Siblings:
    """One consumer's deletes of settled jobs' other copies."""

    def __init__(
        self,
        queue: str,
        control: dict[str, AsyncNodeConnection],
        records: JobRecords,
        pause: Callable[[float], Awaitable[bool]],
    ) -> None:
        self._queue = queue
        self._control = control  # one connection per node (the consumer's: nodes come and go)
        self._records = records
        self._pause = pause  # sleeps; True when the consumer stops
        self._duplicates = metrics.DUPLICATES_SUPPRESSED.labels(queue=queue)
        # (expiry, copy, job id) of other copies a settled job left behind.
        self._unswept: collections.deque[tuple[float, Copy, str]] = collections.deque(maxlen=10_000)
        self._followups: set[asyncio.Task[None]] = set()
        self._deleting = 0  # standbys' deletes on their way
        self._all_deleted: asyncio.Future[None] | None = None  # made when aclose waits for them

    def delete(self, copy: Copy, job_id: str, within: float = 0.0) -> asyncio.Future[bool | None]:
        """Delete a recorded copy, checked to still be this job's."""
        node = self._control[copy.node]
        return node.delete_soon(copy.jid, server=copy.server, job_id=job_id, within=within)

    async def after_success(self, held: Held, copies: list[Copy]) -> None:
        """Delete this copy and our followers at once, the job's other recorded copies (due
        later: the standbys) within ``STANDBY_WINDOW`` seconds, without waiting for them."""
        job_id = held.envelope.job_id
        followers = dict(held.local.followers) if held.local is not None else {}
        for copy in self._others(held, copies, followers):
            # Nobody waits for these: a callback each (no future, no task wake-up).
            self._deleting += 1
            self._control[copy.node].delete_then(
                copy.jid,
                functools.partial(self._deleted, copy, job_id),
                server=copy.server,
                job_id=job_id,
                within=STANDBY_WINDOW,
            )
        own = held.conn.delete_soon(held.job.id, socket=held.socket)
        if not followers:  # the usual case: one future, no gather
            await own
        else:
            results = await asyncio.gather(
                own, *(conn.delete_soon(jid, socket=sock) for (_, jid), (conn, sock) in followers.items())
            )
            mine = results[1:]
            self._count(mine)
            if held.local is not None:
                held.local.deleted.update(
                    key for key, r in zip(followers, mine, strict=True) if r is not None
                )
        if not copies and len(self._followups) < MAX_FOLLOWUPS:
            # No copies recorded (yet): the standbys would otherwise wait out their delay.
            here = {(held.conn.address, held.job.id), *followers}
            task = asyncio.create_task(self._when_recorded(job_id, here))
            self._followups.add(task)
            task.add_done_callback(self._followups.discard)

    async def after_bury(self, held: Held, copies: list[Copy]) -> None:
        """Delete the job's other recorded copies (this one is the buried one)."""
        job_id = held.envelope.job_id
        ours = held.local.followers if held.local is not None else {}  # they settle themselves
        others = self._others(held, copies, ours)
        results = await asyncio.gather(*(self.delete(c, job_id) for c in others))
        self._count(results)
        # A copy held elsewhere at this moment normally sees the record and settles itself;
        # if Redis is lost before it looks, the sweep on Redis' return deletes it instead.
        self._remember(others, results, job_id)

    async def sweep(self) -> None:
        """Delete the remembered copies (Redis is back, maybe without its records)."""
        now = time.monotonic()
        while self._unswept and self._unswept[0][0] < now:
            self._unswept.popleft()
        pending = list(self._unswept)
        self._unswept.clear()
        if pending:
            await asyncio.gather(*(self.delete(c, j) for _, c, j in pending))
            log.info("dq %s: swept %d copies of settled jobs after a redis outage", self._queue, len(pending))

    async def aclose(self) -> None:
        """Send the deletes still waiting for their batch and wait for them; give up those
        still waiting for a record (the copies are deleted on sight)."""
        for task in self._followups:
            task.cancel()
        await asyncio.gather(*self._followups, return_exceptions=True)
        for node in self._control.values():
            node.flush_deletes()
        if self._deleting:
            self._all_deleted = asyncio.get_running_loop().create_future()
            await self._all_deleted

    def _deleted(self, copy: Copy, job_id: str, result: bool | None) -> None:
        """A standby's delete is back (None: its node failed, or it was never sent)."""
        self._deleting -= 1
        if not self._deleting and self._all_deleted is not None and not self._all_deleted.done():
            self._all_deleted.set_result(None)
        self._count([result])
        self._remember([copy], [result], job_id)

    def _others(self, held: Held, copies: list[Copy], skip: Collection[tuple[str, int]]) -> list[Copy]:
        """The recorded copies other than this one and those in ``skip`` (ours, held here)."""
        here = (held.conn.address, held.job.id)
        return [
            c
            for c in copies
            if (c.node, c.jid) != here and (c.node, c.jid) not in skip and c.node in self._control
        ]

    def _count(self, results: list[bool | None]) -> None:
        if suppressed := sum(1 for r in results if r is True):
            self._duplicates.inc(suppressed)

    def _remember(self, copies: list[Copy], results: list[bool | None], job_id: str) -> None:
        expires = time.monotonic() + SWEEP_WINDOW
        self._unswept.extend((expires, c, job_id) for c, r in zip(copies, results, strict=True) if r is False)

    async def _when_recorded(self, job_id: str, here: set[tuple[str, int]]) -> None:
        for pause in RECORD_RETRIES:
            if await self._pause(pause):
                return
            with contextlib.suppress(RedisError):
                copies = await self._records.copies(job_id)
                if copies:
                    others = [c for c in copies if (c.node, c.jid) not in here and c.node in self._control]
                    self._count(await asyncio.gather(*(self.delete(c, job_id) for c in others)))
                    return
