"""Reserving copies from one node: the workers that feed :mod:`~queue_engine.dq.delivery`.

Per node, a few workers wait in ``reserve`` (each on a connection holding nothing, see
:mod:`~queue_engine.dq.held`) so that a job is seen the moment it becomes ready, then take the
copies ready at that moment on the same connection (pipelined ``reserve-with-timeout 0``,
which never blocks).

Guarantees:

- At most the node's prefetch permits of copies are reserved and not yet in a handler (about
  ``concurrency`` per node, so one consumer does not hoard a burst others could handle);
  copies waiting for their due time or another copy's outcome give their permit on.
- One worker at a time waits for permits; when handlers start and free several at once while
  the node has a backlog, it takes them all and reserves that many copies in one round trip
  instead of one each. While copies trickle in (delayed jobs coming due one by one) no
  round trip is spent on non-blocking reserves that would come back empty.
- No copy is taken while Redis is unreachable (it could not be de-duplicated), nor once the
  consumer stops, nor from a node no longer consumed.
- A node that does not answer is retried with a growing pause (up to 2 s) and reported in
  ``ctx.node_errors``; its calls never hold up other nodes (see :mod:`~queue_engine.dq.node_io`).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping

from queue_engine.dq.beanstalk import BeanstalkError, Job
from queue_engine.dq.consumer_context import ConsumerContext
from queue_engine.dq.held import RESERVE_TIMEOUT, NodeLine, Reserved, reserve_ready, reserve_waiting
from queue_engine.dq.node_io import AsyncNodeConnection
from queue_engine.dq.nodes import NodeDown, NodeHealth

log = logging.getLogger(__name__)

RESERVERS_PER_NODE = 4  # connections per node blocked in reserve, waiting for the next ready job
RESERVE_BATCH = 16  # non-blocking reserves sent together when several copies are ready
# A blocking reserve answered within this many seconds found a copy already waiting.
QUICK_ANSWER = 0.01

Deliver = Callable[[NodeLine, AsyncNodeConnection, Reserved], None]


class Reserving:
    """The reserving workers of one consumer, on every node it consumes."""

    def __init__(
        self,
        ctx: ConsumerContext,
        lines: Mapping[str, NodeLine],
        health: Mapping[str, NodeHealth],
        deliver: Deliver,
    ) -> None:
        self._ctx = ctx
        self._lines = lines
        self._health = health
        self._deliver = deliver  # takes each reserved copy (and its permit) from here on

    def _connection(self, node: str) -> AsyncNodeConnection:
        timeout = self._ctx.connect_timeout
        return AsyncNodeConnection(
            node,
            self._ctx.tube,
            connect_timeout=timeout,
            io_timeout=RESERVE_TIMEOUT + timeout,
            health=self._health[node],
        )

    async def work(self, node: str) -> None:
        """Reserve copies from ``node`` and hand each to delivery, until stop or the node is
        no longer consumed.

        The worker waits in ``reserve`` on an idle connection; once a copy comes, it takes the
        other copies ready at that moment on the same connection (pipelined, non-blocking), up
        to the free permits, and goes on waiting on another idle connection. Holding a copy
        (until due, or while another copy is handled) never stops it seeing the next job.
        """
        ctx = self._ctx
        line = self._lines[node]
        backoff = 0.1
        while not ctx.stopping.is_set() and node in ctx.nodes:
            if ctx.redis_error is not None:
                await ctx.pause(0.1)  # never take a job that cannot be de-duplicated
                continue
            async with line.gate:  # one worker waits for permits: the one woken takes them all
                await line.permits.acquire()
                extra = 0
                while extra < RESERVE_BATCH - 1 and not line.permits.locked():
                    await line.permits.acquire()  # free: does not wait
                    extra += 1
            conn = line.take() or self._connection(node)
            line.hold(conn)  # the worker's own use: the connection is not idle meanwhile
            try:
                if extra and not line.backlog:
                    for _ in range(extra):  # copies trickle in: one blocking reserve, one permit
                        line.permits.release()
                # Several handlers just started and copies are waiting: take them in one round
                # trip (pipelined, never blocking) rather than one reserve per copy. None came:
                # one permit is kept for the blocking reserve below.
                elif extra and await self._take_batch(line, conn, 1 + extra, keep=1):
                    await self._take_ready(line, conn, RESERVE_BATCH)
                    continue
                asked = time.monotonic()
                try:
                    got = await conn.call(reserve_waiting, probe=True)
                except NodeDown as exc:
                    line.permits.release()
                    if node not in ctx.node_errors:
                        log.warning("dq %s: node %s unreachable: %s", ctx.queue, node, exc.reason)
                    ctx.node_errors[node] = exc.reason
                    await ctx.pause(backoff)
                    backoff = min(2.0, backoff * 2)
                    continue
                if ctx.node_errors.pop(node, None) is not None:
                    log.info("dq %s: node %s reachable again", ctx.queue, node)
                backoff = 0.1
                if got is None:
                    line.permits.release()
                    continue
                self._deliver(line, conn, got)
                # A copy that was ready already (the answer came at once): others may be too.
                line.backlog = time.monotonic() - asked < QUICK_ANSWER
                if line.backlog:
                    await self._take_ready(line, conn)
            finally:
                line.let_go(conn)

    async def _take_ready(self, line: NodeLine, conn: AsyncNodeConnection, size: int = 2) -> None:
        """Take the copies ready now on ``conn`` while permits last: ``size`` in the first round
        trip, twice as many in each next one (up to RESERVE_BATCH) while all asked for came, so
        that a trickle costs few empty answers and a backlog few round trips."""
        while not self._ctx.stopping.is_set() and self._ctx.redis_error is None:
            wanted = 0
            while wanted < size and not line.permits.locked():
                await line.permits.acquire()  # free: does not wait
                wanted += 1
            if not wanted or await self._take_batch(line, conn, wanted) < wanted:
                return  # the node has no more ready copies (or failed): back to waiting
            size = min(RESERVE_BATCH, 2 * size)

    async def _take_batch(self, line: NodeLine, conn: AsyncNodeConnection, wanted: int, keep: int = 0) -> int:
        """Take up to ``wanted`` copies ready now on ``conn`` (one permit each, already
        acquired); how many came. The unused permits are given back, but for ``keep`` of them
        when none came."""
        ctx = self._ctx
        jobs: list[Job] = []
        if not ctx.stopping.is_set() and ctx.redis_error is None:
            with contextlib.suppress(NodeDown, BeanstalkError):
                socket, jobs = await conn.call(reserve_ready(wanted), limit=ctx.connect_timeout)
        line.backlog = len(jobs) == wanted
        for job in jobs:
            self._deliver(line, conn, (socket, job))
        for _ in range(wanted - len(jobs) - (0 if jobs else keep)):
            line.permits.release()
        return len(jobs)
