"""Watching Redis for one consumer: whether it answers, its clock, its settings.

Guarantees:

- Redis's clock is measured every second (every 0.25 s while Redis is unreachable), on a
  client of its own: the verdict never waits behind the held copies' calls.
- Once any part saw Redis fail (``ctx.redis_error``), the consumer takes no copy until this
  watch clears it, and it clears it only after the leases of the attempts still running were
  taken again (Redis may have restarted empty: their other copies must not start meanwhile)
  and the copies of jobs settled just before the outage were swept
  (:meth:`~queue_engine.dq.siblings.Siblings.sweep`).
- Risky durability settings are read once Redis answers, logged and kept in ``warnings``
  (None until read).
- It ends when asked (``closing``), never by cancellation: redis-py can swallow a
  cancellation that lands inside a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from redis.asyncio import Redis
from redis.exceptions import RedisError

from queue_engine.dq.consumer_context import ConsumerContext
from queue_engine.dq.held import Held
from queue_engine.dq.leases import LeaseKeeper
from queue_engine.dq.redis_client import durability_warnings
from queue_engine.dq.siblings import Siblings

log = logging.getLogger(__name__)


class RedisWatch:
    """One consumer's watch on Redis (see the module docs)."""

    def __init__(
        self,
        ctx: ConsumerContext,
        *,
        client: Redis,
        redis: Redis,
        keeper: LeaseKeeper,
        claimed: Mapping[str, Held],
        siblings: Siblings,
    ) -> None:
        self._ctx = ctx
        self._client = client  # the watch's own
        self._redis = redis  # the consumer's, for the settings
        self._keeper = keeper
        self._claimed = claimed  # by token: copies whose attempt has not settled
        self._siblings = siblings
        self.closing = asyncio.Event()
        # Risky Redis settings seen once Redis answered (None: not checked yet).
        self.warnings: list[str] | None = None

    async def run(self) -> None:
        ctx = self._ctx
        while not self.closing.is_set():
            try:
                await self.measure_clock()  # also the liveness check
            except RedisError as exc:
                ctx.note_redis_error(exc)
            else:
                if self.warnings is None:
                    await self._check_settings()
                if ctx.redis_error is not None and await self._retake_leases():
                    log.info("dq %s: redis reachable again; taking jobs", ctx.queue)
                    ctx.redis_error = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), 0.25 if ctx.redis_error else 1.0)

    async def measure_clock(self) -> None:
        await self._ctx.clock.measure(self._client)

    async def _check_settings(self) -> None:
        with contextlib.suppress(RedisError):
            self.warnings = await durability_warnings(self._redis)
            for warning in self.warnings:
                log.warning("dq %s: %s", self._ctx.queue, warning)

    async def _retake_leases(self) -> bool:
        try:
            for held in list(self._claimed.values()):
                await self._keeper.renew(held)
        except RedisError:
            return False
        # Done markers may be gone with the old Redis: delete the other copies of jobs settled
        # just before the outage that still were held by someone then.
        await self._siblings.sweep()
        return True
