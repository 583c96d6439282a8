"""One deadline watchdog per consumer, in place of an ``asyncio.timeout`` per handler call.

Shared by both engines (kq's dispatch, dq's delivery). Event loop only. ``asyncio.timeout_at``
per call schedules a timer and cancels it again (a heap push, a handle, two coroutines for the
context manager): about 9 us, most of what a call that awaits costs beyond the handler. Here a
call that awaits only notes its task and deadline in a dict (:meth:`begin`, :meth:`end`); one
timer stands at the earliest deadline known when it was set. Every call of a consumer has the
same timeout, so a new deadline is almost never earlier than the one the timer waits for, and
the timer fires about once per timeout, not per call. When it fires it cuts every call past its
deadline the way ``asyncio.timeout`` does (``task.cancel()``) and sets itself at the earliest
deadline left. :meth:`run` turns the cut into :class:`CallTimedOut` when ``task.uncancel()``
leaves no other cancel (a stop's cancel still propagates).

A task (kq's worker, dq's copy holder) runs one call at a time, so a task is in the dict at
most once, and the dict holds at most ``concurrency`` calls: its size is also the number of
calls in flight.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


class CallTimedOut(TimeoutError):
    """The watchdog cut a call at its deadline (not a TimeoutError the handler raised itself)."""


class Deadlines:
    """The deadlines of a consumer's handler calls in progress (those that awaited)."""

    __slots__ = ("_calls", "_handle", "_loop", "_resolution", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # task -> its call's deadline (loop time); None once the watchdog cut the call.
        self._calls: dict[asyncio.Task[Any], float | None] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._when = math.inf  # when the timer fires (inf: no timer)
        # The loop runs a timer this much early (BaseEventLoop._run_once): cut alike.
        self._resolution = time.get_clock_info("monotonic").resolution

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, awaitable: Awaitable[T], deadline: float) -> T:
        """``await awaitable`` in the current task, cut at ``deadline`` (``loop.time()``).

        Raises :class:`CallTimedOut` when only the watchdog cancelled it, as ``asyncio.timeout``
        would; any other cancel (a stop's, or one from inside the call) propagates as
        CancelledError. A cut that the awaitable swallowed (it returned or raised something
        else) leaves no pending cancel behind.
        """
        task = asyncio.current_task()
        assert task is not None
        self.begin(task, deadline)
        try:
            result = await awaitable
        except asyncio.CancelledError:
            if self.end(task) and task.uncancel() == 0:
                raise CallTimedOut from None
            raise
        except BaseException:
            if self.end(task):
                task.uncancel()  # cut, but the call raised something else meanwhile
            raise
        if self.end(task):
            task.uncancel()  # cut, but the call swallowed the cancel and returned
        return result

    def begin(self, task: asyncio.Task[Any], deadline: float) -> None:
        """``task`` runs a call that must end by ``deadline`` (``loop.time()``)."""
        self._calls[task] = deadline
        if deadline < self._when:
            self._arm(deadline)

    def end(self, task: asyncio.Task[Any]) -> bool:
        """The call of ``task`` ended (any way): True if the watchdog cut it (cancelled its task)."""
        return self._calls.pop(task) is None

    def close(self) -> None:
        """No timer left behind (at stop): the calls are all over by then."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._when = math.inf

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._when = when
        self._handle = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """Timer callback (event loop): cut the calls past their deadline, wait for the next."""
        self._handle = None
        self._when = math.inf
        now = self._loop.time() + self._resolution
        calls = self._calls
        earliest = math.inf
        expired: list[asyncio.Task[Any]] = []
        for task, deadline in calls.items():
            if deadline is None:
                continue  # cut already, its task has not run since
            if deadline <= now:
                expired.append(task)
            elif deadline < earliest:
                earliest = deadline
        for task in expired:
            calls[task] = None
            # After the loop over the dict: a cancel runs no task, but an awaitable's own
            # cancel() might run code of its own.
            task.cancel()
        if earliest != math.inf:
            self._arm(earliest)
