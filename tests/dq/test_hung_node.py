"""A node that hangs (SIGSTOP: connections stay open, nothing answers) must not stall the rest."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time

from dq.dqkit import FAST, DqEnv, Recorder

from queue_engine.dq import DelayAdmin, DelayConsumer, DelayJob, Outcome


def _consumer(dq: DqEnv, recorder: Recorder, nodes: list[str], lease_ttl: float = 2.0) -> DelayConsumer:
    return DelayConsumer(
        nodes,
        dq.tube,
        dq.redis.url,
        recorder,
        policy=dataclasses.replace(FAST, timeout=30.0),
        concurrency=4,
        lease_ttl=lease_ttl,
        connect_timeout=1.0,
    )


async def test_a_hung_node_stalls_neither_delivery_nor_stop(dq: DqEnv) -> None:
    recorder = Recorder()
    async with dq.producer() as producer:
        sent = [await producer.delay(b"%d" % i, 0.02 * i) for i in range(200)]  # due over 4 s
    consumer = _consumer(dq, recorder, dq.nodes)
    task = asyncio.create_task(consumer.run())
    hung = dq.cluster[0]
    try:
        await recorder.wait_for(lambda: len(recorder.deliveries) >= 30)
        hung.pause()
        # Each job has copies on the two healthy nodes. Before per-node isolation every delete
        # and touch queued behind the hung node's timeouts: about 0.25 jobs/s from here on.
        await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent), within=40)
        started = time.monotonic()
        await consumer.stop(grace=2)
        await asyncio.wait_for(task, 60)
        stopped_in = time.monotonic() - started
    finally:
        hung.resume()
        if not task.done():
            await consumer.stop(grace=0)
            await task
    assert stopped_in < 8, f"stop(grace=2) took {stopped_in:.1f}s with a hung node"

    # The hung node's copies are back; a consumer deletes them on sight (all done already).
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url, connect_timeout=1.0)
    try:
        async with dq.consumer(recorder):
            for _ in range(100):
                left = sum(s.ready + s.delayed + s.reserved for s in await admin.stats())
                if left == 0:
                    break
                await asyncio.sleep(0.3)
    finally:
        await admin.close()
    assert left == 0
    counts = collections.Counter(recorder.ids())
    assert {job_id: n for job_id, n in counts.items() if n != 1} == {}


async def test_the_lease_is_renewed_while_a_touch_waits_on_a_hung_node(dq: DqEnv) -> None:
    """The handled copy sits on a node that hangs: its touches time out, its lease must not.

    Consumer A sees only node 0, consumer B only nodes 1 and 2, so A's copy is on node 0.
    B's copies wait, held, for A's outcome; a lapsed lease would let B run the job again.
    """
    started = asyncio.Event()

    async def slow(job: DelayJob) -> Outcome:
        started.set()
        await asyncio.sleep(9)  # past a touch (every 5 s) and several lease periods (1 s)
        return Outcome.success()

    recorder = Recorder(slow)
    node0, *others = dq.nodes
    a = _consumer(dq, recorder, [node0], lease_ttl=1.0)
    b = _consumer(dq, recorder, others, lease_ttl=1.0)
    tasks = [asyncio.create_task(a.run())]
    try:
        async with dq.producer() as producer:
            job_id = await producer.delay(b"slow", 0)
        await asyncio.wait_for(started.wait(), 10)
        tasks.append(asyncio.create_task(b.run()))
        dq.cluster[0].pause()
        await asyncio.sleep(12)
    finally:
        dq.cluster[0].resume()
        await asyncio.gather(a.stop(grace=2), b.stop(grace=2))
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert len(recorder.of(job_id)) == 1


async def test_a_producer_never_puts_to_a_node_a_consumer_found_hung(dq: DqEnv) -> None:
    """Producers share the consumers' hung-node tracking (one per node and process): once a
    node is suspect, publishes skip it instead of each waiting out a put's timeout, and a
    probe in the background, not any publish, finds out when it answers again."""
    recorder = Recorder()
    hung = dq.cluster[0]
    consumer = _consumer(dq, recorder, dq.nodes)
    task = asyncio.create_task(consumer.run())
    try:
        async with dq.producer() as producer:
            await producer.delay(b"warm", 0)
            await recorder.wait_for(lambda: len(recorder.deliveries) == 1)
            hung.pause()
            # The consumer's reserves on the stopped node time out: it is suspect from then on.
            await recorder.wait_for(lambda: hung.address in consumer.health()[1], within=30)
        # A new producer (so nothing of its own tells it): it must not send a put there.
        async with dq.producer(connect_timeout=30.0) as producer:
            pool = producer._pools[hung.address]
            puts: list[str] = []
            attempt = pool._attempt

            async def counting(op, limit):  # type: ignore[no-untyped-def]
                if getattr(op, "__name__", "") == "put":
                    puts.append(pool.address)
                return await attempt(op, limit)

            pool._attempt = counting  # type: ignore[method-assign]
            sent = await asyncio.gather(*(producer.delay(b"%d" % i, 0) for i in range(10)))
            assert puts == []
            hung.resume()
            # The background probe (or the consumer's) sees it answer; puts go there again.
            for _ in range(100):
                if not producer._suspect(hung.address):
                    break
                await asyncio.sleep(0.1)
            sent.append(await producer.delay(b"again", 0))
        await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent), within=30)
    finally:
        hung.resume()
        await consumer.stop(grace=2)
        await task
    counts = collections.Counter(recorder.ids())
    assert {job_id: n for job_id, n in counts.items() if n != 1} == {}
