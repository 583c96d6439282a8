"""Publishing: copies on a majority of nodes, clear errors for bad requests."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import pytest
from dq.dqkit import DqEnv, Recorder

from queue_engine.dq import HEADER_BYTES, DelayAdmin, DelayProducer, SyncDelayProducer
from queue_engine.errors import ConfigError, InvalidRequest, TooLarge, Unavailable


async def _copies(dq: DqEnv) -> list[int]:
    admin = DelayAdmin(dq.nodes, dq.tube, dq.redis.url, connect_timeout=0.5)
    try:
        return [s.ready + s.delayed + s.reserved + s.buried for s in await admin.stats()]
    finally:
        await admin.close()


async def test_each_job_is_written_to_three_nodes(dq: DqEnv) -> None:
    async with dq.producer() as producer:
        job_id = await producer.delay(b"x", 60)
    assert re.fullmatch(r"[0-9a-f]{24}", job_id)
    assert await _copies(dq) == [1, 1, 1]


async def test_bad_requests_say_what_to_fix(dq: DqEnv) -> None:
    async with dq.producer(max_job_bytes=1000) as producer:
        with pytest.raises(InvalidRequest, match="in the past"):
            await producer.at(b"x", datetime.now(UTC) - timedelta(seconds=5))
        with pytest.raises(InvalidRequest, match="no time zone"):
            await producer.at(b"x", datetime.now() + timedelta(seconds=5))
        with pytest.raises(InvalidRequest, match="0 or more"):
            await producer.delay(b"x", -1)
        with pytest.raises(InvalidRequest, match="bytes"):
            await producer.delay("text", 1)  # type: ignore[arg-type]
        with pytest.raises(TooLarge, match=f"at most {1000 - HEADER_BYTES}"):
            await producer.delay(b"x" * (1001 - HEADER_BYTES), 1)
        await producer.delay(b"x" * (1000 - HEADER_BYTES), 60)  # exactly the limit is fine
        with pytest.raises(InvalidRequest, match="not a dq job id"):
            await producer.revoke("17")
    with pytest.raises(ConfigError, match="host:port"):
        DelayProducer(["localhost"], dq.tube, dq.redis.url)
    with pytest.raises(ConfigError, match="tube"):
        DelayProducer(dq.nodes, "bad tube", dq.redis.url)
    with pytest.raises(ConfigError, match="redis"):
        DelayProducer(dq.nodes, dq.tube, "http://nope")
    assert await _copies(dq) == [1, 1, 1]  # only the one job of exactly the limit


async def test_one_node_down_still_meets_quorum_and_is_delivered_once(dq: DqEnv) -> None:
    dq.cluster[0].kill()
    recorder = Recorder()
    async with dq.producer(connect_timeout=0.5) as producer, dq.consumer(recorder):
        job_id = await producer.delay(b"x", 0.2)
        await recorder.wait_for(lambda: job_id in recorder.ids())
        await asyncio.sleep(0.5)
    assert len(recorder.of(job_id)) == 1


async def test_missed_quorum_raises_naming_the_nodes_and_leaves_no_copy(dq: DqEnv) -> None:
    dq.cluster[1].kill()
    dq.cluster[2].kill()
    async with dq.producer(connect_timeout=0.5) as producer:
        with pytest.raises(Unavailable) as raised:
            await producer.delay(b"x", 30)
    message = str(raised.value)
    assert "1 of 3" in message and "2 needed" in message
    assert dq.cluster[1].address in message and dq.cluster[2].address in message
    assert (await _copies(dq))[0] == 0  # the copy on the live node was undone


async def test_five_nodes_spread_jobs_and_replace_a_dead_node(
    dq: DqEnv, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from harness.servers import BeanstalkdCluster  # noqa: PLC0415

    cluster = BeanstalkdCluster(tmp_path_factory.mktemp("five"), size=5, binlog=False)
    cluster.start()
    try:
        cluster[4].kill()
        env = DqEnv(cluster, dq.redis, dq.tube)
        async with env.producer(connect_timeout=0.5) as producer:
            for _ in range(10):
                await producer.delay(b"x", 60)
        counts = await _copies(env)
        assert sum(counts) == 30  # three copies each: the dead node was replaced
        assert counts[4] == 0 and all(c > 0 for c in counts[:4])
    finally:
        cluster.stop()


def test_sync_producer_for_scripts(dq: DqEnv) -> None:
    with SyncDelayProducer(dq.nodes, dq.tube, dq.redis.url) as producer:
        job_id = producer.delay(b"x", 60)
        producer.at(b"y", datetime.now(UTC) + timedelta(minutes=1))
        producer.revoke(job_id)
    assert asyncio.run(_copies(dq)) == [1, 1, 1]  # the revoked job's copies are deleted


async def test_a_hung_node_does_not_stop_publishing(dq: DqEnv) -> None:
    """SIGSTOP: the node accepts connections but never answers."""
    dq.cluster[2].pause()
    recorder = Recorder()
    try:
        async with dq.producer(connect_timeout=0.3) as producer:
            sent = [await producer.delay(b"%d" % i, 0) for i in range(5)]
        async with dq.consumer(recorder):
            await recorder.wait_for(lambda: set(recorder.ids()) == set(sent))
    finally:
        dq.cluster[2].resume()
    assert sorted(recorder.ids()) == sorted(sent)


async def test_a_failed_publish_is_never_delivered_even_if_a_slow_node_stored_it(dq: DqEnv) -> None:
    """Puts that time out on hung nodes may still be stored there once the nodes go on."""
    recorder = Recorder()
    async with dq.producer(connect_timeout=0.5) as producer:
        for _ in range(6):  # every pooled connection is open: the hung nodes get the put itself
            await producer.delay(b"warm", 0)
        dq.cluster[1].pause()
        dq.cluster[2].pause()
        try:
            with pytest.raises(Unavailable, match="revoked"):
                await producer.delay(b"failed", 0)
        finally:
            dq.cluster[1].resume()
            dq.cluster[2].resume()
        async with dq.consumer(recorder):
            await asyncio.sleep(1.0)  # the stray copies are ready by now
            control = await producer.delay(b"control", 0.5)
            await recorder.wait_for(lambda: control in recorder.ids())
            await asyncio.sleep(0.5)
    assert b"failed" not in [d.job.body for d in recorder.deliveries]
