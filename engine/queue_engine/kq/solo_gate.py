"""One gate per event loop (so per process, in the sidecar) over every kq handler call.

After a crash, the messages the dead process may have had in the handler are suspects: one of
them may have killed it. A suspect's call runs alone (no other call of any consumer in this
loop runs beside it), so if the process dies again, the death is that message's, and its
attempt, recorded before the call, counts against it alone: bystanders are never dead-lettered
for a poison message's crashes.

Event loop only. An ordinary call costs one attribute read here (``held``), and two integer
updates if it awaits (a call that finishes in its first step lets no other task run, so no
suspect's call can start beside it); ordinary calls wait only while a suspect's call waits
or runs (right after a crash).
"""

from __future__ import annotations

import asyncio
import weakref


class SoloGate:
    def __init__(self) -> None:
        self.running = 0  # calls in progress, solo or not
        self._solo_waiting = 0
        self._solo_running = False
        self._waiters: list[asyncio.Future[None]] = []
        # True while ordinary calls must wait: a plain attribute, read before every call, kept
        # up to date by the solo methods (the only ones that change what it depends on).
        self.held = False

    def _update_held(self) -> None:
        self.held = bool(self._solo_waiting or self._solo_running)

    async def enter(self) -> None:
        """Before an ordinary call."""
        await self.opened()
        self.running += 1

    async def opened(self) -> None:
        """Return once ordinary calls may start (at once if they may now)."""
        while self.held:
            await self._wait()

    def leave(self) -> None:
        self.running -= 1
        if not self.running and self._waiters:
            self._wake()

    async def enter_solo(self) -> None:
        """Before a suspect's call: once every other call ended, none starts until leave_solo."""
        self._solo_waiting += 1
        self._update_held()
        try:
            while self.running or self._solo_running:
                await self._wait()
        except BaseException:
            self._solo_waiting -= 1
            self._update_held()
            self._wake()  # ordinary calls held for this one may go
            raise
        self._solo_waiting -= 1
        self._solo_running = True
        self._update_held()
        self.running += 1

    def leave_solo(self) -> None:
        self._solo_running = False
        self._update_held()
        self.running -= 1
        self._wake()

    async def _wait(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        finally:
            if not future.done():
                future.cancel()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)


_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, SoloGate] = weakref.WeakKeyDictionary()


def gate_for(loop: asyncio.AbstractEventLoop) -> SoloGate:
    """The gate every consumer running in ``loop`` shares."""
    gate = _GATES.get(loop)
    if gate is None:
        gate = _GATES[loop] = SoloGate()
    return gate
