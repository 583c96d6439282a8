"""Whose clock decides when a dq job is due: Redis's, the one all consumers share.

Guarantees: :meth:`RedisClock.now` never runs ahead of Redis's clock (so a consumer never
delivers early because its own clock is ahead), and it is at most a round trip behind it (so a
consumer whose clock is behind does not hold due copies, reserved and out of everyone else's
reach, until its own clock catches up). Clocks that agree within the round trip give exactly
this machine's time: no jitter from the measurement. A difference of more than a second is
logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from redis.asyncio import Redis

log = logging.getLogger(__name__)


class RedisClock:
    """This machine's wall clock, corrected to Redis's (``TIME``) where they measurably differ."""

    def __init__(self, queue: str, clock: Callable[[], float]) -> None:
        self._queue = queue  # for the log
        self._clock = clock  # this machine's wall clock (a parameter so tests can skew it)
        self.offset = 0.0  # Redis's clock minus ours, where measurably different

    def now(self) -> float:
        return self._clock() + self.offset

    async def measure(self, redis: Redis) -> None:
        """Ask Redis's time once (raises ``RedisError``: also a liveness check)."""
        before = self._clock()
        seconds, micros = await redis.time()
        after = self._clock()
        theirs = seconds + micros / 1_000_000
        # Redis's clock read `theirs` somewhere between `before` and `after` by ours, so at our
        # `after` it says at least `theirs`: `theirs - after` never puts us ahead of it (never
        # early; at most a round trip late). `theirs - before` could be a round trip early.
        # (TIME has whole microseconds: one below `before` still means the clocks agree.)
        offset = 0.0 if before - 1e-6 <= theirs <= after else theirs - after
        if abs(offset - self.offset) > 1.0 and abs(offset) > 1.0:
            log.warning("dq %s: this clock is %.1fs off Redis's; following Redis's", self._queue, -offset)
        self.offset = offset
