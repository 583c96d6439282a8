"""Run a handler coroutine's first step at once, in the calling task (event loop only).

Python 3.12 has an eager task factory; on 3.11 we step the coroutine by hand. A handler that
never awaits (or only awaits things already done) finishes in that first step, so its call
costs no task switch and no timer. One that does await is handed back as an awaitable that
resumes it exactly where it stopped, so the caller can wrap the rest in a timeout.
"""

from __future__ import annotations

import types
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class Started:
    """A coroutine whose first step ran and yielded ``first`` (what it waits for)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self.coro = coro
        self.first = first


def start(coro: Coroutine[Any, Any, T]) -> T | Started:
    """Run ``coro`` up to its first real suspension: its result, or a :class:`Started`.

    Exceptions of the first step propagate, as they would from ``await coro``.
    """
    try:
        first = coro.send(None)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    return Started(coro, first)


@types.coroutine
def resume(started: Started) -> Generator[Any, Any, Any]:
    """``await resume(s)``: hand the yielded future to the running task, then go on as
    ``await coro`` would (a cancellation thrown in is passed to the coroutine)."""
    coro, pending = started.coro, started.first
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            continue
        try:
            pending = coro.send(sent)
        except StopIteration as stop:
            return stop.value
