"""The shared deadline watchdog (queue_engine/deadlines.py) on its own: both engines cut their
handler calls with it, so what it promises is checked here without either engine."""

from __future__ import annotations

import asyncio

from queue_engine.deadlines import Deadlines


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
