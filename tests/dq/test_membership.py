"""Live node membership (set_nodes, the nodes file) and moving a leaving node's jobs, on real nodes."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import greenstalk
from dq.dqkit import DqEnv, Recorder

from queue_engine.dq import DelayAdmin, DelayJob, Outcome
from queue_engine.dq.drain import NodeDrainer
from queue_engine.dq.membership import Membership, NodesFileWatcher


def jobs_on(address: str, tube: str) -> int:
    host, port = address.rsplit(":", 1)
    client = greenstalk.Client((host, int(port)))
    try:
        stats = client.stats_tube(tube)
    except greenstalk.NotFoundError:
        return 0
    finally:
        client.close()
    return sum(int(stats[f"current-jobs-{s}"]) for s in ("ready", "delayed", "buried", "reserved"))


async def test_a_node_added_live_takes_copies_and_is_consumed(dq: DqEnv) -> None:
    first, second, third = dq.nodes
    producer = dq.producer()
    producer.set_nodes([first, second])
    recorder = Recorder()
    async with dq.consumer(recorder) as consumer:
        consumer.set_nodes([first, second])
        await producer.delay(b"before", 0)
        assert jobs_on(third, dq.tube) == 0
        producer.set_nodes([first, second, third])
        consumer.set_nodes([first, second, third])
        assert (producer.copies, producer.quorum) == (3, 2)
        ids = [await producer.delay(b"after-%d" % i, 2) for i in range(5)]
        assert jobs_on(third, dq.tube) == 5  # each job has a copy on every node now
        await recorder.wait_for(lambda: set(ids) <= set(recorder.ids()))
        # Only the third node may hold them now: consumed from it too.
        producer.set_nodes([third])
        consumer.set_nodes([third])
        last = await producer.delay(b"third-only", 0)
        await recorder.wait_for(lambda: last in recorder.ids())
    assert len(recorder.ids()) == len(set(recorder.ids())) == 7
    await producer.close()


async def test_a_draining_node_is_emptied_keeping_due_time_attempts_and_revocation(dq: DqEnv) -> None:
    staying, leaving = dq.nodes[:2], dq.nodes[2]

    async def answer(job: DelayJob) -> Outcome:
        return Outcome.drop("bury me") if job.body == b"bury" else Outcome.success()

    recorder = Recorder(answer)
    producer = dq.producer()
    async with dq.consumer(recorder) as consumer:
        producer.set_nodes([leaving])  # its only copy, buried there
        buried = await producer.delay(b"bury", 0)
        await recorder.wait_for(lambda: buried in recorder.ids())
        await asyncio.sleep(0.5)
        # Writers stop using the leaving node; consumers keep reading it.
        producer.set_nodes(staying, [leaving])
        consumer.set_nodes(staying, [leaving])
        publish = time.time()
        later = {await producer.delay(b"later-%d" % i, 4): publish + 4 for i in range(3)}
        revoked = await producer.delay(b"revoked", 3)
        await producer.revoke(revoked)
        assert jobs_on(leaving, dq.tube) == 1  # only the buried copy; the new jobs went elsewhere

        # A job written before the node drained, with a copy there.
        producer.set_nodes(dq.nodes)
        early = await producer.delay(b"written-before", 5)
        due_early = time.time() + 5
        producer.set_nodes(staying, [leaving])
        revoked_before = await producer.delay(b"revoked-before", 5)
        await producer.revoke(revoked_before)
        assert jobs_on(leaving, dq.tube) >= 2

        drainer = NodeDrainer(dq.tube, dq.redis.url, connect_timeout=1.0)
        result = await drainer.drain(leaving, staying)
        await drainer.close()
        assert result.done, result
        assert result.moved >= 2  # the buried copy and the delayed copy of written-before
        assert jobs_on(leaving, dq.tube) == 0
        consumer.set_nodes(staying)

        await recorder.wait_for(lambda: {early, *later} <= set(recorder.ids()), within=15)
        await asyncio.sleep(1.5)
    by_id = {d.job.id: d for d in recorder.deliveries}
    assert by_id[early].at >= due_early - 0.01, "never early"
    assert revoked not in by_id and revoked_before not in by_id
    assert len(recorder.ids()) == len(set(recorder.ids())), "each job once"
    # The buried job is still buried, on a staying node, with its attempts.
    async with _admin(dq) as admin:
        (job,) = await admin.buried()
        assert (job.id, job.body, job.attempts) == (buried, b"bury", 1)
        assert job.node in staying
    await producer.close()


class _admin:
    def __init__(self, dq: DqEnv) -> None:
        self.admin = DelayAdmin(dq.nodes[:2], dq.tube, dq.redis.url)

    async def __aenter__(self):  # type: ignore[no-untyped-def]
        return self.admin

    async def __aexit__(self, *_: object) -> None:
        await self.admin.close()


async def test_the_nodes_file_watch_follows_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "nodes.json"
    path.write_text(json.dumps({"nodes": [{"address": "a:1", "state": "active"}]}))
    seen: list[Membership] = []

    async def listener(membership: Membership) -> None:
        seen.append(membership)

    watch = NodesFileWatcher(path, listener, interval=0.05)
    task = asyncio.create_task(watch.run())
    document = {"nodes": [{"address": "a:1", "state": "active"}, {"address": "b:1", "state": "draining"}]}
    tmp = tmp_path / "new"
    tmp.write_text(json.dumps(document))
    tmp.replace(path)  # as the kubelet swaps a mounted ConfigMap
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.05)
    path.write_text("{not json")  # a bad file keeps the last good list
    await asyncio.sleep(0.2)
    task.cancel()
    assert seen == [Membership(("a:1",), ("b:1",))]
    assert watch.current == Membership(("a:1",), ("b:1",)) and watch.error is not None
