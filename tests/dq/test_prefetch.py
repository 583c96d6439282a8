"""Prefetch: a consumer holds about `concurrency` ready copies per node, not a whole burst."""

from __future__ import annotations

import asyncio
import collections
import time

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
