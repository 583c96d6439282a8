"""The shared deadline watchdog (queue_engine/deadlines.py) on its own: both engines cut their
handler calls with it, so what it promises is checked here without either engine."""

from __future__ import annotations

import asyncio

import pytest

from queue_engine.deadlines import CallTimedOut, Deadlines


async def test_a_call_past_its_deadline_is_cancelled_and_reported_as_cut() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    outcome: list[str] = []

    async def call(deadline: float, seconds: float, name: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        deadlines.begin(task, deadline)
        try:
            await asyncio.sleep(seconds)
            outcome.append(f"{name} ended")
        except asyncio.CancelledError:
            cut = deadlines.end(task)
            assert cut and task.uncancel() == 0
            outcome.append(f"{name} cut")
            return
        assert not deadlines.end(task)

    now = loop.time()
    # The later deadline is noted first: the watchdog must move its timer earlier.
    late = asyncio.create_task(call(now + 0.2, 10, "late"))
    early = asyncio.create_task(call(now + 0.05, 10, "early"))
    quick = asyncio.create_task(call(now + 5, 0, "quick"))
    await asyncio.gather(late, early, quick)
    # (Not their order: a stalled loop may find both past their deadlines in one pass.)
    assert sorted(outcome) == ["early cut", "late cut", "quick ended"]
    assert len(deadlines) == 0
    deadlines.close()


async def test_run_tells_a_cut_from_a_stop_and_from_the_calls_own_timeout_error() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)

    # Cut at its deadline: CallTimedOut, and no cancel left pending on the task.
    async def cut() -> bool:
        with pytest.raises(CallTimedOut):
            await deadlines.run(asyncio.sleep(10), loop.time() + 0.02)
        task = asyncio.current_task()
        assert task is not None
        return task.cancelling() == 0

    assert await asyncio.create_task(cut())

    # A TimeoutError the call raises itself is passed on as it is, not taken for a cut.
    async def own_timeout() -> None:
        raise TimeoutError("the call's own")

    with pytest.raises(TimeoutError) as raised:
        await deadlines.run(own_timeout(), loop.time() + 5)
    assert not isinstance(raised.value, CallTimedOut)

    # A stop's cancel propagates as CancelledError, even past the deadline.
    async def stopped() -> None:
        await deadlines.run(asyncio.sleep(10), loop.time() + 0.05)

    task = asyncio.create_task(stopped())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # A cut the call swallows: its result comes back, the task keeps no pending cancel.
    async def swallows() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    async def run_swallows() -> tuple[str, int]:
        result = await deadlines.run(swallows(), loop.time() + 0.02)
        me = asyncio.current_task()
        assert me is not None
        return result, me.cancelling()

    assert await asyncio.create_task(run_swallows()) == ("swallowed", 0)
    assert len(deadlines) == 0
    deadlines.close()
