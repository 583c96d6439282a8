"""A revoked job is never delivered: before its due time, while a copy is held, with a node down."""

from __future__ import annotations

import asyncio

import greenstalk
from dq.dqkit import DqEnv, Recorder
from redis import asyncio as redis

from queue_engine.dq import DelayAdmin


async def _count(dq: DqEnv, *states: str) -> int:
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url, connect_timeout=0.5)
    try:
        return sum(getattr(s, state) for s in await admin.stats() for state in states)
    finally:
        await admin.close()


async def _jobs_left(dq: DqEnv) -> int:
    return await _count(dq, "ready", "delayed", "reserved", "buried")


async def test_revoke_before_due_deletes_every_copy(dq: DqEnv) -> None:
    recorder = Recorder()
    async with dq.producer() as producer, dq.consumer(recorder):
        revoked = await producer.delay(b"revoked", 2.5)  # delayed in beanstalkd for 2s
        kept = await producer.delay(b"kept", 2.5)
        await producer.revoke(revoked)
        await producer.revoke(revoked)  # idempotent
        assert await _jobs_left(dq) == 3  # only the kept job's copies remain
        await recorder.wait_for(lambda: kept in recorder.ids())
        await asyncio.sleep(0.3)
    assert recorder.of(revoked) == []


async def test_revoke_while_the_consumer_holds_copies_waiting_for_the_due_time(dq: DqEnv) -> None:
    """Copies become ready up to a second early and wait, reserved; revoke then cannot delete them."""
    recorder = Recorder()
    async with dq.producer() as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"x", 1.9)  # ready at 1s, due at 1.9s
        control = await producer.delay(b"control", 2.0)
        await asyncio.sleep(1.4)
        assert await _count(dq, "reserved") >= 1
        await producer.revoke(job_id)
        await recorder.wait_for(lambda: control in recorder.ids())
        await asyncio.sleep(0.5)
        assert await _jobs_left(dq) == 0  # the held copies were deleted on sight
    assert recorder.of(job_id) == []


async def test_revoke_while_another_client_holds_a_copy_and_a_node_is_down(dq: DqEnv) -> None:
    recorder = Recorder()
    # No standbys: every copy is ready at once, so node 0's copy can be reserved now.
    async with dq.producer(connect_timeout=0.5, standby_delay=0) as producer:
        job_id = await producer.delay(b"x", 0)
        # Someone else holds the copy on node 0 (as a consumer mid-delivery would) ...
        host, port = dq.nodes[0].split(":")
        holder = greenstalk.Client((host, int(port)), encoding=None, use=dq.tube, watch=dq.tube)
        held = holder.reserve(timeout=2)
        # ... and node 1 is down: neither copy can be deleted now.
        dq.cluster[1].kill()
        await producer.revoke(job_id)
        holder.release(held)
        holder.close()
        dq.cluster[1].start()  # back from its binlog, with the copy
        async with dq.consumer(recorder):
            control = await producer.delay(b"control", 0.5)
            await recorder.wait_for(lambda: control in recorder.ids())
            await asyncio.sleep(1.0)
            assert await _jobs_left(dq) == 0
    assert recorder.of(job_id) == []


async def test_a_revoke_holds_until_the_due_time_even_without_a_record(dq: DqEnv) -> None:
    """Published while Redis was down (no record), revoked later, due in 30 days: the tombstone
    must outlive the due time, not the 14 days records otherwise keep."""
    thirty_days = 30 * 24 * 3600
    async with dq.producer() as producer:
        dq.redis.stop()
        job_id = await producer.delay(b"far off", thirty_days)  # stored; its record is not
        dq.redis.start()
        await producer.revoke(job_id)
    client = redis.Redis.from_url(dq.redis.url)
    try:
        ttl = await client.ttl(f"dq:{dq.tube}:j:{job_id}")
    finally:
        await client.aclose()
    assert ttl > thirty_days
