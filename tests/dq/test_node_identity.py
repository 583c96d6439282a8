"""A node restarted without its binlog numbers jobs from 1 again: a recorded copy id may now
name another tube's job, and beanstalkd's delete works across tubes. Such jobs must survive."""

from __future__ import annotations

import asyncio

import greenstalk
from dq.dqkit import DqEnv, Recorder


def _lose_binlog(dq: DqEnv) -> None:
    node = dq.cluster[0]
    node.kill()
    node.binlog = False  # comes back empty: job ids start at 1 again
    node.start()


def _put_elsewhere(dq: DqEnv) -> tuple[greenstalk.Client[bytes], int]:
    host, port = dq.nodes[0].split(":")
    client: greenstalk.Client[bytes] = greenstalk.Client((host, int(port)), encoding=None, use="other")
    return client, client.put(b"someone else's job", delay=60)


async def test_finishing_a_job_leaves_a_reused_id_on_a_restarted_node_alone(dq: DqEnv) -> None:
    async with dq.producer() as producer:
        job_id = await producer.delay(b"mine", 1.0)  # its copy on node 0 is job 1 there
    _lose_binlog(dq)
    client, other = _put_elsewhere(dq)
    assert other == 1  # the same id as our lost copy
    recorder = Recorder()
    async with dq.consumer(recorder):
        await recorder.wait_for(lambda: job_id in recorder.ids())
        await asyncio.sleep(0.5)  # the other copies are deleted after the success
    assert client.peek(other).body == b"someone else's job"
    client.close()


async def test_revoke_leaves_a_reused_id_on_a_restarted_node_alone(dq: DqEnv) -> None:
    async with dq.producer() as producer:
        job_id = await producer.delay(b"mine", 30)
        _lose_binlog(dq)
        client, other = _put_elsewhere(dq)
        assert other == 1
        await producer.revoke(job_id)
    assert client.peek(other).body == b"someone else's job"
    client.close()
