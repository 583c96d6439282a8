"""A consumer whose clock is wrong still delivers on time: due decisions follow Redis's clock."""

from __future__ import annotations

import asyncio
import time

from dq.dqkit import FAST, DqEnv, Recorder

from queue_engine.dq import DelayConsumer


async def _deliver_with_skew(dq: DqEnv, skew: float) -> tuple[float, float]:
    """(due, delivered) of one job, for a consumer whose clock is ``skew`` seconds off."""
    recorder = Recorder()
    consumer = DelayConsumer(
        dq.nodes,
        dq.tube,
        dq.redis.url,
        recorder,
        policy=FAST,
        connect_timeout=1.0,
        clock=lambda: time.time() + skew,
    )
    task = asyncio.create_task(consumer.run())
    try:
        async with dq.producer() as producer:
            due = time.time() + 1.5
            job_id = await producer.delay(b"x", 1.5)
        await recorder.wait_for(lambda: job_id in recorder.ids(), within=40)
    finally:
        await consumer.stop(grace=2)
        await task
    return due, recorder.of(job_id)[0].at


async def test_a_consumer_with_a_slow_clock_does_not_hold_due_jobs(dq: DqEnv) -> None:
    due, delivered = await _deliver_with_skew(dq, -20.0)
    assert due <= delivered < due + 2.0, f"delivered {delivered - due:.2f}s after due"


async def test_a_consumer_with_a_fast_clock_does_not_deliver_early(dq: DqEnv) -> None:
    due, delivered = await _deliver_with_skew(dq, +20.0)
    assert delivered >= due, f"delivered {due - delivered:.3f}s early"
