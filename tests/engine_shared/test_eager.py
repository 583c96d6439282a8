"""eager.start/resume: a handler's first step runs in the caller; the rest resumes as ``await``."""

from __future__ import annotations

import asyncio

import pytest

from queue_engine import eager


async def test_a_coroutine_that_never_awaits_finishes_in_its_first_step() -> None:
    async def handler() -> int:
        return 7

    assert eager.start(handler()) == 7


async def test_an_awaiting_coroutine_resumes_where_it_stopped() -> None:
    steps = []

    async def handler() -> int:
        steps.append("first")
        await asyncio.sleep(0.01)
        steps.append("second")
        await asyncio.sleep(0)
        return 8

    started = eager.start(handler())
    assert isinstance(started, eager.Started)
    assert steps == ["first"]
    assert await eager.resume(started) == 8
    assert steps == ["first", "second"]


async def test_errors_of_either_step_propagate() -> None:
    async def early() -> None:
        raise ValueError("early")

    async def late() -> None:
        await asyncio.sleep(0)
        raise ValueError("late")

    with pytest.raises(ValueError, match="early"):
        eager.start(early())
    started = eager.start(late())
    assert isinstance(started, eager.Started)
    with pytest.raises(ValueError, match="late"):
        await eager.resume(started)


async def test_a_timeout_cancels_the_resumed_coroutine_and_it_can_clean_up() -> None:
    cleaned = asyncio.Event()

    async def handler() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    started = eager.start(handler())
    assert isinstance(started, eager.Started)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await eager.resume(started)
    assert cleaned.is_set()


async def test_a_coroutine_may_catch_a_cancellation_and_go_on() -> None:
    async def handler() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "caught"
        return "slept"

    async def call() -> str:
        started = eager.start(handler())
        assert isinstance(started, eager.Started)
        result: str = await eager.resume(started)
        return result

    task = asyncio.ensure_future(call())
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task == "caught"
