"""What every part of one dq consumer shares: its name, its nodes, its stop signal, Redis's
clock and reachability, and the small waits and node calls all parts make.

Guarantees:

- :meth:`ConsumerContext.pause` and :meth:`ConsumerContext.sleep_until` end as soon as the
  consumer stops (:meth:`ConsumerContext.stop`), with a future and a timer each, no task
  (thousands of copies may wait for their due time at once).
- Wall-clock decisions (:meth:`ConsumerContext.now`, ``sleep_until``) follow Redis's clock, the
  one all consumers share: never early (see :mod:`~queue_engine.dq.clock`).
- ``redis_error`` is set by any part that saw Redis fail, and cleared only by the Redis watch
  (:mod:`~queue_engine.dq.redis_watch`) once Redis answers and the running attempts' leases
  were taken again: while it is set, no copy is reserved.
- :meth:`ConsumerContext.quietly` runs a quick node call with the short timeout and never
  raises node trouble (it is logged; the answer is None).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

from queue_engine.dq.beanstalk import BeanstalkError
from queue_engine.dq.clock import RedisClock
from queue_engine.dq.node_io import AsyncNodeConnection, Op
from queue_engine.dq.nodes import NodeDown
from queue_engine.dq.redis_client import describe_redis_error

log = logging.getLogger(__name__)

KIND = "delay"  # the metrics' kind label


class ConsumerContext:
    """The state one consumer's parts share (see the module docs)."""

    def __init__(
        self, queue: str, tube: str, nodes: list[str], *, connect_timeout: float, clock: Callable[[], float]
    ) -> None:
        self.queue = queue
        self.tube = tube
        self.nodes = nodes  # consumed now (active and draining); replaced by set_nodes
        self.connect_timeout = connect_timeout
        self.clock = RedisClock(queue, clock)  # due decisions follow Redis's clock
        self.stopping = asyncio.Event()
        self.deadline = math.inf  # monotonic end of stop's grace
        self.redis_error: str | None = None
        self.node_errors: dict[str, str] = {}
        self._sleepers: set[asyncio.Future[None]] = set()  # pauses that stop() cuts short

    def now(self) -> float:
        """Wall-clock time for due decisions: Redis's clock, the one all consumers share."""
        return self.clock.now()

    def stop(self) -> None:
        """Stop: every pause ends now, and later ones at once."""
        self.stopping.set()
        for woken in self._sleepers:
            _wake(woken)

    async def sleep_until(self, due: float) -> bool:
        """Wait until wall-clock ``due`` (never earlier); False if stopping first."""
        while True:
            remaining = due - self.now()
            if remaining <= 0:
                return True
            # In steps: the offset to Redis's clock may change meanwhile.
            if await self.pause(min(remaining, 1.0)):
                return False

    async def pause(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when stop was asked for."""
        if self.stopping.is_set():
            return True
        loop = asyncio.get_running_loop()
        woken: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, woken)
        self._sleepers.add(woken)
        try:
            await woken
        finally:
            timer.cancel()
            self._sleepers.discard(woken)
        return self.stopping.is_set()

    async def quietly(self, conn: AsyncNodeConnection, op: Op[Any]) -> Any:
        """Run quick ``op`` on ``conn`` (the short timeout, not the reserve's); node trouble is
        logged, not raised (None is returned)."""
        try:
            return await conn.call(op, limit=self.connect_timeout)
        except (NodeDown, BeanstalkError) as exc:
            log.debug("dq %s: %s on %s: %r", self.queue, getattr(op, "__name__", "op"), conn.address, exc)
            return None

    def note_redis_error(self, exc: BaseException) -> None:
        if self.redis_error is None:
            log.warning(
                "dq %s: redis unreachable, not taking jobs: %s", self.queue, describe_redis_error(exc)
            )
        self.redis_error = describe_redis_error(exc)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
