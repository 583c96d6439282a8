"""Prefetch: a consumer holds about `concurrency` ready copies per node, not a whole burst."""

from __future__ import annotations

import asyncio
import collections
import time

import greenstalk
from dq.dqkit import DqEnv, Recorder

from queue_engine.dq import DelayJob, Outcome


async def test_a_busy_consumer_leaves_a_burst_to_the_others(dq: DqEnv) -> None:
    # One copy per job, straight on the nodes, all ready at once: no standby comes up later to
    # hand a hoarded job to the other consumer anyway.
    sent = dq.put_single_copies(40, due=time.time())

    go_on = asyncio.Event()

    async def stuck(job: DelayJob) -> Outcome:
        await go_on.wait()
        return Outcome.success()

    busy, free = Recorder(answer=stuck), Recorder()
    async with dq.consumer(busy, concurrency=2):
        await busy.wait_for(lambda: len(busy.deliveries) >= 2)  # both its handlers are stuck now
        async with dq.consumer(free, concurrency=2):
            # The busy one holds at most about its concurrency per node (plus its reserving
            # workers' copies and the two stuck ones); before, up to 64 per node: all of them.
            await free.wait_for(lambda: len(free.deliveries) >= len(sent) - 3 * 4 - 2, within=30)
            go_on.set()
            await free.wait_for(lambda: len(set(free.ids()) | set(busy.ids())) == len(sent), within=30)
    counts = collections.Counter(free.ids() + busy.ids())
    assert {job_id: n for job_id, n in counts.items() if n != 1} == {}


def _reserves_sent(dq: DqEnv) -> int:
    total = 0
    for address in dq.nodes:
        host, port = address.split(":")
        client = greenstalk.Client((host, int(port)), encoding=None)
        total += int(client.stats()["cmd-reserve-with-timeout"])
        client.close()
    return total


async def test_copies_coming_due_one_by_one_cost_no_empty_reserves(dq: DqEnv) -> None:
    """Delayed jobs come due one by one: each copy costs about one reserve, not a batch of
    non-blocking reserves sent for the free permits that come back empty (16 per copy)."""
    recorder = Recorder()
    jobs = 30
    async with dq.consumer(recorder, concurrency=8):
        await asyncio.sleep(0.5)  # the workers wait in reserve
        before = _reserves_sent(dq)
        started = time.monotonic()
        async with dq.producer() as producer:
            for _ in range(jobs):
                await producer.delay(b"x", 1.0)  # ready at once, held until due
                await asyncio.sleep(0.05)
        await recorder.wait_for(lambda: len(set(recorder.ids())) == jobs, within=20)
        sent = _reserves_sent(dq) - before
        elapsed = time.monotonic() - started
    idle = 4 * len(dq.nodes) * (elapsed + 1)  # each waiting worker's reserve times out once a second
    assert sent < idle + 4 * jobs, f"{sent} reserves for {jobs} jobs in {elapsed:.1f}s"
