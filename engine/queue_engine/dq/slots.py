"""A consumer's handler slots: at most ``n`` handlers at once.

Guarantees: never more than ``n`` slots taken. A slot that frees goes to the copy waiting
longest among those whose job is already claimed (their attempt is counted and their lease
held), and only then to the others, who still have to claim. A wait may be bounded: a waiter
that gave up holds no slot (a slot handed to it in the same moment is passed on).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque


class HandlerSlots:
    def __init__(self, n: int) -> None:
        self._free = n
        self._claimed: deque[asyncio.Future[None]] = deque()
        self._unclaimed: deque[asyncio.Future[None]] = deque()
        self._loop = asyncio.get_running_loop()
        self.freed_at = -math.inf  # loop time a slot was last freed

    def busy(self) -> bool:
        """No slot free now."""
        return self._free == 0

    def queued_unclaimed(self) -> bool:
        """Copies that still have to claim are waiting for a slot (perhaps already gone)."""
        return bool(self._unclaimed)

    async def take(self, *, claimed: bool, within: float | None = None) -> bool:
        """Take a slot (waiting at most ``within`` seconds); False if none came in time."""
        if self._free:
            self._free -= 1
            return True
        fut = self._loop.create_future()
        (self._claimed if claimed else self._unclaimed).append(fut)
        try:
            async with asyncio.timeout(within):
                await fut
        except TimeoutError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed over in the same moment: pass it on
            return False
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()
            fut.cancel()  # a future left in a queue is skipped when its turn comes
            raise
        return True

    def release(self) -> None:
        self.freed_at = self._loop.time()
        for waiting in (self._claimed, self._unclaimed):
            while waiting:
                fut = waiting.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self._free += 1
