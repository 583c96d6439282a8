"""A burst of due jobs with high concurrency: waiting for a Redis connection is not Redis down."""

from __future__ import annotations

import asyncio
import collections
import time

from dq.dqkit import DqEnv, Recorder

from queue_engine.dq import DelayConsumer


async def test_a_burst_does_not_look_like_redis_down(dq: DqEnv) -> None:
    # Jobs put straight on the nodes (one copy each: copies of one job would wait for each
    # other without asking Redis), ready at once and all due at the same instant: the consumer
    # holds 8 x concurrency copies per node, and all of them ask Redis at that instant (more
    # than the old pool's 1024 connections).
    sent = dq.put_single_copies(540, due=time.time() + 5)
    recorder = Recorder()
    seen: set[str] = set()
    consumer = DelayConsumer(dq.nodes, dq.tube, dq.redis.url, recorder, concurrency=64, connect_timeout=3.0)
    task = asyncio.create_task(consumer.run())

    async def watch() -> None:
        while True:
            seen.add(consumer.health()[1])
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent), within=60)
    finally:
        watcher.cancel()
        await consumer.stop(grace=2)
        await task
    assert not [reason for reason in seen if "redis" in reason], seen
    counts = collections.Counter(recorder.ids())
    assert {job_id: n for job_id, n in counts.items() if n != 1} == {}
