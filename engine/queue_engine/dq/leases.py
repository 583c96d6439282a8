"""Keeping hold of a copy while it is held: its lease renewed in Redis, its reservation touched.

Guarantees:

- While a copy's attempt is claimed (``held.claimed``), its lease is renewed every
  ``renew_every`` seconds (a third of the lease at most), so no other copy of the job starts
  while the handler runs.
- The reservation is touched every ``TOUCH_EVERY`` seconds (a quarter of the job's TTR), so
  beanstalkd does not hand the copy to someone else while it is held.
- The touch runs beside the renewals, never before them: on a hung node it waits out a
  timeout, and the lease must not expire meanwhile.
- A copy settled within ``renew_every`` (most are) costs no timer and no task: one timer per
  consumer, for the copy watched longest, starts the keeping of each copy once it is due.
- Stopping is asked for, never cancelled: a Redis call cut midway costs its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from redis.exceptions import RedisError

from queue_engine.dq.consumer_context import ConsumerContext
from queue_engine.dq.held import Held, toucher
from queue_engine.dq.producer import JOB_TTR
from queue_engine.dq.records import JobRecords

TOUCH_EVERY = JOB_TTR / 4  # seconds between touches of a held reservation


class LeaseKeeper:
    """Renews the leases and touches the reservations of one consumer's held copies."""

    def __init__(self, ctx: ConsumerContext, records: JobRecords, lease_ttl: float) -> None:
        self._ctx = ctx
        self._records = records
        self.lease_ttl = lease_ttl
        self.renew_every = min(TOUCH_EVERY, lease_ttl / 3)
        # Copies watched and not kept yet, by token, in the order watched (so by due time),
        # with the monotonic time each was watched; the timer fires for the first.
        self._watched: dict[str, tuple[Held, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, held: Held) -> None:
        """Keep hold of ``held`` from ``renew_every`` seconds on, until :meth:`stop`."""
        self._watched[held.token] = (held, time.monotonic())
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.renew_every, self._start_due)

    async def stop(self, held: Held) -> None:
        """Stop keeping hold of ``held``; returns once no renewal or touch of it is running."""
        held.done_keeping.set()
        self._watched.pop(held.token, None)
        if held.keeper is not None:
            await held.keeper

    def _start_due(self) -> None:
        """Start keeping the copies watched for ``renew_every``; wait for the next one."""
        self._timer = None
        now = time.monotonic()
        watched = self._watched
        while watched:
            token = next(iter(watched))
            held, since = watched[token]
            if since + self.renew_every > now:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(since + self.renew_every - now, self._start_due)
                return
            del watched[token]
            if not held.done_keeping.is_set():
                held.keeper = asyncio.create_task(self._keep(held, since))

    async def renew(self, held: Held) -> None:
        """Renew (or take again, after a Redis restart) ``held``'s lease; raises ``RedisError``."""
        await self._records.renew(held.envelope.job_id, held.token, self.lease_ttl)

    async def _keep(self, held: Held, last_touch: float) -> None:
        touching: asyncio.Task[Any] | None = None
        try:
            while True:
                if held.claimed:
                    with contextlib.suppress(RedisError):
                        await self.renew(held)
                if (touching is None or touching.done()) and time.monotonic() - last_touch >= TOUCH_EVERY:
                    touching = asyncio.create_task(self._ctx.quietly(held.conn, toucher(held)))
                    last_touch = time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(held.done_keeping.wait(), self.renew_every)
                if held.done_keeping.is_set():
                    return
        finally:
            if touching is not None:
                await touching  # settling uses the connection next; it would wait for it anyway
