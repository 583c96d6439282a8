"""Nodes and Redis fail while jobs flow: nothing is lost and nothing is delivered twice."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

from dq.dqkit import DqEnv, Recorder
from redis import asyncio as redis

from harness.servers import BeanstalkdCluster, RedisServer
from queue_engine.dq import DelayAdmin, DelayConsumer, DelayJob, Outcome


async def test_node_killed_while_consuming_every_job_delivered_once(dq: DqEnv) -> None:
    recorder = Recorder()
    async with dq.producer(connect_timeout=0.5) as producer, dq.consumer(recorder):
        sent = [await producer.delay(b"%d" % i, 0.1 * (i % 15)) for i in range(30)]
        await asyncio.sleep(0.6)
        dq.cluster[0].kill()
        await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent))
        await asyncio.sleep(0.5)
    counts = collections.Counter(recorder.ids())
    assert {job_id: n for job_id, n in counts.items() if n != 1} == {}


async def test_node_dies_mid_handler_and_comes_back_from_its_binlog(dq: DqEnv) -> None:
    """The copy being handled is on a node that dies; when it returns, the copy is not redelivered."""
    started = asyncio.Event()
    proceed = asyncio.Event()

    async def wait_for_kill(job: DelayJob) -> Outcome:
        started.set()
        await proceed.wait()
        return Outcome.success()

    recorder = Recorder(wait_for_kill)
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url, connect_timeout=0.5)
    async with dq.producer() as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"x", 0)
        await asyncio.wait_for(started.wait(), 10)
        holding = next(i for i, s in enumerate(await admin.stats()) if s.reserved)
        dq.cluster[holding].kill()
        proceed.set()
        await asyncio.sleep(0.5)
        dq.cluster[holding].start()  # its copy is back, ready, from the binlog
        control = await producer.delay(b"control", 1.0)
        await recorder.wait_for(lambda: control in recorder.ids())
        await asyncio.sleep(1.0)
        left = sum(s.ready + s.delayed + s.reserved + s.buried for s in await admin.stats())
    await admin.close()
    assert len(recorder.of(job_id)) == 1
    assert left == 0  # the returning copy was deleted on sight


async def test_jobs_written_before_a_node_restart_survive_in_its_binlog(dq: DqEnv) -> None:
    recorder = Recorder()
    async with dq.producer() as producer:
        sent = [await producer.delay(b"%d" % i, 1.5) for i in range(5)]
    dq.cluster.stop()  # every node goes down: only the binlogs keep the jobs
    dq.cluster.start()
    async with dq.consumer(recorder):
        await recorder.wait_for(lambda: set(recorder.ids()) == set(sent))
        await asyncio.sleep(0.5)
    assert sorted(recorder.ids()) == sorted(sent)


async def test_redis_outage_pauses_consuming_and_loses_nothing(dq: DqEnv) -> None:
    recorder = Recorder()
    async with dq.producer() as producer, dq.consumer(recorder) as consumer:
        sent = [await producer.delay(b"%d" % i, 0.1 * i) for i in range(30)]
        await asyncio.sleep(1.0)
        dq.redis.stop()
        await asyncio.sleep(0.7)
        ok, reason = consumer.health()
        assert not ok and reason.startswith("redis unreachable"), reason
        during = len(recorder.deliveries)
        await asyncio.sleep(1.0)
        assert len(recorder.deliveries) == during  # nothing is taken while jobs cannot be de-duplicated
        dq.redis.start()  # a fresh, empty Redis: the worst case
        await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent))
        await asyncio.sleep(0.5)
        assert consumer.health() == (True, "ok")
    counts = collections.Counter(recorder.ids())
    assert {job_id: n for job_id, n in counts.items() if n != 1} == {}
    assert set(counts) == set(sent)


async def test_health_reports_nodes_down_and_consuming_resumes_when_they_return(dq: DqEnv) -> None:
    recorder = Recorder()
    async with dq.producer() as producer, dq.consumer(recorder) as consumer:
        job_id = await producer.delay(b"x", 1.0)
        for node in dq.cluster:
            node.kill()
        await asyncio.sleep(0.8)
        ok, reason = consumer.health()
        assert not ok and reason.startswith("no beanstalkd node reachable"), reason
        assert all(address in reason for address in dq.nodes)
        dq.cluster.start()  # from their binlogs
        await recorder.wait_for(lambda: job_id in recorder.ids())
        for _ in range(50):  # reconnecting workers back off up to a second or two
            if consumer.health() == (True, "ok"):
                break
            await asyncio.sleep(0.1)
        assert consumer.health() == (True, "ok")
    assert len(recorder.of(job_id)) == 1


async def test_two_nodes_keep_taking_publishes_through_a_rolling_restart(
    tmp_path: Path, redis_server: RedisServer, unique: str
) -> None:
    cluster = BeanstalkdCluster(tmp_path / "two", size=2)
    cluster.start()
    try:
        env = DqEnv(cluster, redis_server, unique)
        recorder = Recorder()
        sent = []
        async with env.producer(connect_timeout=0.5) as producer:
            for node in cluster:  # one node at a time down, as a StatefulSet rolls
                node.stop()
                sent += [await producer.delay(b"%d" % i, 0) for i in range(5)]
                node.start()
        async with env.consumer(recorder):
            await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent))
            await asyncio.sleep(0.5)
        assert sorted(recorder.ids()) == sorted(sent)  # each once, none lost
    finally:
        cluster.stop()


async def test_a_redis_that_can_lose_records_is_reported_not_refused(dq: DqEnv) -> None:
    client = redis.Redis.from_url(dq.redis.url)
    await client.config_set("maxmemory-policy", "allkeys-lru")  # the harness runs without AOF too
    await client.aclose()
    recorder = Recorder()
    async with dq.producer() as producer, dq.consumer(recorder) as consumer:
        job_id = await producer.delay(b"x", 0)
        await recorder.wait_for(lambda: job_id in recorder.ids())  # still consuming
        await _until_checked(consumer)
        warnings = consumer.redis_warnings or []
    assert any("maxmemory-policy is allkeys-lru" in w and "noeviction" in w for w in warnings), warnings
    assert any("appendonly is off" in w for w in warnings), warnings


async def test_a_durable_redis_gets_no_warning(dq: DqEnv) -> None:
    client = redis.Redis.from_url(dq.redis.url)
    await client.config_set("appendonly", "yes")
    await client.aclose()
    async with dq.consumer(Recorder()) as consumer:
        await _until_checked(consumer)
        assert consumer.redis_warnings == []


async def _until_checked(consumer: DelayConsumer) -> None:
    for _ in range(100):
        if consumer.redis_warnings is not None:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the Redis settings were never checked")


async def test_with_the_working_copys_node_down_a_standby_is_late_by_at_most_its_delay(dq: DqEnv) -> None:
    """Each job's working copy is due on time, its standbys 5 s later: with one node gone, the
    jobs whose working copy it held come from a standby, never early, at most 5 s + 1 s late."""
    recorder = Recorder()
    async with dq.producer() as producer:
        sent = [await producer.delay(b"%d" % i, 1.0) for i in range(9)]
    dq.cluster[0].kill()  # working copies rotate over the nodes: about a third were there
    async with dq.consumer(recorder):
        await recorder.wait_for(lambda: set(recorder.ids()) >= set(sent), within=20)
    late = {d.job.id: d.at - d.job.due_at.timestamp() for d in recorder.deliveries}
    assert all(0 <= lateness < 5 + 1 + 0.5 for lateness in late.values()), late
    assert any(lateness > 3 for lateness in late.values()), late  # some came from a standby
    assert sorted(recorder.ids()) == sorted(sent)
