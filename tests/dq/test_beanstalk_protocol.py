"""The asyncio beanstalkd client against a real beanstalkd, command by command (doc/protocol.md)."""

from __future__ import annotations

import asyncio
import gc
import time

import greenstalk
import pytest

from harness.servers import BeanstalkdCluster
from queue_engine.dq.beanstalk import BeanstalkError, Connection, JobTooBig, NotFound, TimedOut
from queue_engine.dq.node_io import AsyncNodeConnection
from queue_engine.dq.nodes import NodeDown, NodeHealth


async def _open(cluster: BeanstalkdCluster, tube: str) -> Connection:
    host, port = cluster.addresses[0].split(":")
    return await Connection.open(host, int(port), tube)


async def test_put_reserve_delete_and_the_job_lifecycle(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    conn = await _open(beanstalk_cluster, unique)
    try:
        body = b"a\r\nbody with CRLF inside\r\n" + bytes(range(256))
        jid = await conn.put(body, priority=10, delay=0, ttr=20)
        job = await conn.reserve(0)
        assert job == (jid, body)
        await conn.touch(jid)
        await conn.release(jid, priority=10, delay=0)
        assert (await conn.reserve_job(jid)).body == body
        await conn.bury(jid, priority=10)
        assert (await conn.peek(jid)).body == body
        await conn.delete(jid)
        with pytest.raises(NotFound):
            await conn.delete(jid)
        with pytest.raises(NotFound):
            await conn.peek(jid)
        with pytest.raises(TimedOut):
            await conn.reserve(0)
        stats = await conn.stats()
        assert stats["id"] and int(stats["cmd-put"]) >= 1
    finally:
        conn.close()


async def test_requests_pipeline_and_replies_match_in_order(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    conn = await _open(beanstalk_cluster, unique)
    try:
        bodies = [b"%d" % i * (i % 50) for i in range(500)]
        ids = await asyncio.gather(*(conn.put(b, priority=1, delay=0, ttr=20) for b in bodies))
        assert len(set(ids)) == 500
        peeked = await asyncio.gather(*(conn.peek(jid) for jid in ids))
        assert [p.body for p in peeked] == bodies
        # An answer to a request nobody waits for any more is read and dropped, in step.
        gone = asyncio.ensure_future(conn.peek(ids[0]))
        gone.cancel()
        assert (await conn.peek(ids[1])).body == bodies[1]
        results = await asyncio.gather(
            *(conn.delete(jid) for jid in ids), conn.delete(ids[0]), return_exceptions=True
        )
        assert results[:-1] == [None] * 500 and isinstance(results[-1], NotFound)
    finally:
        conn.close()


async def test_tubes_and_server_errors(beanstalk_cluster: BeanstalkdCluster, unique: str) -> None:
    host, port = beanstalk_cluster.addresses[0].split(":")
    other = greenstalk.Client((host, int(port)), use="default")
    other.put("not ours")
    conn = await _open(beanstalk_cluster, unique)
    try:
        with pytest.raises(TimedOut):
            await conn.reserve(0)  # only our tube is watched
        with pytest.raises(JobTooBig):
            await conn.put(b"x" * 70000, priority=1, delay=0, ttr=20)
        with pytest.raises(BeanstalkError):
            await conn.release(999999, priority=1, delay=0)
        assert (await conn.put(b"ok", priority=1, delay=0, ttr=20)) > 0  # still in step
    finally:
        conn.close()
        other.close()


async def test_a_closed_connection_fails_waiting_requests(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    conn = await _open(beanstalk_cluster, unique)
    waiting = asyncio.ensure_future(conn.reserve(5))
    await asyncio.sleep(0.1)
    conn.close()
    with pytest.raises(ConnectionError):
        await waiting
    with pytest.raises(ConnectionError):
        await conn.peek(1)


async def test_node_connection_reconnects_after_a_restart_and_skips_a_hung_node(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    node = beanstalk_cluster[0]
    health = NodeHealth(node.address)
    conn = AsyncNodeConnection(node.address, unique, connect_timeout=0.5, io_timeout=0.5, health=health)

    async def put(c: Connection) -> int:
        return await c.put(b"x", priority=1, delay=0, ttr=20)

    await conn.call(put)
    node.restart()
    await conn.call(put)  # the stale connection is retried once on a new one
    node.pause()
    try:
        started = time.monotonic()
        with pytest.raises(NodeDown, match="timed out"):
            await conn.call(put)
        with pytest.raises(NodeDown, match="skipped"):
            await conn.call(put)  # suspect: fails at once
        assert time.monotonic() - started < 1.5
    finally:
        node.resume()
    await asyncio.sleep(0.6)
    await conn.call(put, probe=True)  # a probe clears the suspicion
    await conn.call(put)
    conn.close()


def test_works_on_uvloop_as_the_sidecar_runs_it(beanstalk_cluster: BeanstalkdCluster, unique: str) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def roundtrip() -> bytes:
        conn = await _open(beanstalk_cluster, unique)
        try:
            jid = await conn.put(b"on uvloop", priority=1, delay=0, ttr=20)
            job = await conn.reserve(0)
            await conn.delete(jid)
            return job.body
        finally:
            conn.close()

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(roundtrip()) == b"on uvloop"
    finally:
        loop.close()


async def test_ready_jobs_are_reserved_and_deleted_several_in_one_write(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    conn = await _open(beanstalk_cluster, unique)
    try:
        ids = [await conn.put(b"%d" % i, priority=1, delay=0, ttr=20) for i in range(3)]
        jobs = await conn.reserve_ready(5)  # two more than there are: TIMED_OUT, skipped
        assert [job.id for job in jobs] == ids
        assert await conn.reserve_ready(2) == []
        assert await conn.delete_many([*ids, ids[0]]) == [True, True, True, False]
        assert await conn.delete_many([]) == []
    finally:
        conn.close()


async def test_a_connection_the_watchdog_gives_up_on_fails_its_calls_as_timeouts(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    node = beanstalk_cluster[0]
    health = NodeHealth(node.address)
    conn = AsyncNodeConnection(node.address, unique, connect_timeout=1.0, io_timeout=0.3, health=health)
    try:
        await conn.call(lambda c: c.stats())  # connected
        node.pause()
        with pytest.raises(NodeDown, match="timed out"):
            await conn.call(lambda c: c.stats())
        assert health.suspect  # and the next call fails at once
        with pytest.raises(NodeDown, match="skipped"):
            await conn.call(lambda c: c.stats())
    finally:
        node.resume()
        conn.close()


async def test_a_short_call_beside_a_long_one_is_cut_at_its_own_limit(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    node = beanstalk_cluster[0]
    conn = AsyncNodeConnection(node.address, unique, connect_timeout=1.0, io_timeout=30.0)
    try:
        await conn.call(lambda c: c.stats())  # connected
        node.pause()
        long_call = asyncio.ensure_future(conn.call(lambda c: c.stats()))  # 30 s limit
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(NodeDown, match="timed out"):
            await conn.call(lambda c: c.stats(), limit=0.3)
        assert time.monotonic() - started < 5.0  # not at the long call's 30 s
        with pytest.raises(NodeDown):  # the cut socket fails the long call too
            await long_call
    finally:
        node.resume()
        conn.close()


async def test_deletes_may_wait_a_little_to_leave_together_and_a_close_answers_those_not_sent(
    beanstalk_cluster: BeanstalkdCluster, unique: str
) -> None:
    """``delete_soon(within=...)`` waits up to that long (the standbys' deletes); a delete due
    now takes the waiting ones along; closing the connection answers those not sent with None."""
    node = beanstalk_cluster[0]
    conn = await _open(beanstalk_cluster, unique)
    nodes = AsyncNodeConnection(node.address, unique, connect_timeout=1.0, io_timeout=1.0)
    try:
        server = (await conn.stats())["id"]
        jids = [await conn.put(b"x%d" % i, priority=10, delay=60, ttr=20) for i in range(4)]
        waiting = nodes.delete_soon(jids[0], server=server, job_id="", within=30.0)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert (await conn.peek(jids[0])).body == b"x0"  # still there: it waits for company
        now = nodes.delete_soon(jids[1], server=server)
        assert await asyncio.wait_for(asyncio.gather(waiting, now), 2.0) == [True, True]
        started = time.monotonic()
        assert await asyncio.wait_for(nodes.delete_soon(jids[2], server=server, within=0.3), 5.0)
        assert 0.25 < time.monotonic() - started < 3.0
        for jid in jids[:3]:
            with pytest.raises(NotFound):
                await conn.peek(jid)
        never = nodes.delete_soon(jids[3], server=server, within=30.0)
        nodes.close()
        assert await asyncio.wait_for(never, 1.0) is None
        assert (await conn.peek(jids[3])).body == b"x3"  # not sent
    finally:
        nodes.close()
        conn.close()


@pytest.mark.parametrize("cut", ["close", "expire"])
async def test_a_pipelined_batch_cut_midway_fails_its_caller_and_logs_no_stray_errors(
    beanstalk_cluster: BeanstalkdCluster, unique: str, cut: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch (deletes, reserves) awaits its replies in order: once the first fails, nobody
    reads the others' errors. That is no bug, so asyncio must not log "Future exception was
    never retrieved" for each of them (ERROR lines in a node failure that lost nothing)."""
    conn = await _open(beanstalk_cluster, unique)
    batch = asyncio.ensure_future(conn.delete_many([1, 2, 3, 4]))
    await asyncio.sleep(0)  # the requests are waiting for their replies
    if cut == "close":
        conn.close()
    else:
        conn.expire("test: no answer")
    with pytest.raises(ConnectionError if cut == "close" else TimeoutError):
        await batch
    del batch
    gc.collect()
    await asyncio.sleep(0)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
