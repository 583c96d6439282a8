"""Rebalances: paused partitions come back, old generations never commit or overlap a key."""

from __future__ import annotations

import asyncio

from kq.kq_helpers import FAST_GROUP, Recorder, committed, create_topics, produce_raw, running, wait_for

from queue_engine import metrics
from queue_engine.kq import KafkaConsumer, KafkaMessage
from queue_engine.policy import Outcome


async def test_a_partition_paused_for_backpressure_is_fetched_again_after_a_rebalance(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(None, f"{i}".encode()) for i in range(20)])
    gate = asyncio.Event()
    seen: set[bytes] = set()

    async def slow(message: KafkaMessage) -> Outcome:
        await gate.wait()
        seen.add(message.value)
        return Outcome.success()

    received = metrics.RECEIVED.labels("kafka", unique)
    before = received._value.get()
    a = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        slow,
        offset="first",
        max_uncommitted=4,
        revoke_grace=0.5,
        extra=FAST_GROUP,
    )
    # b never finishes anything: whatever it holds is handed back when it leaves.
    b = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        Recorder(lambda m: asyncio.Event().wait()),
        offset="first",
        extra=FAST_GROUP,
    )
    async with running(a):
        await wait_for(lambda: received._value.get() - before >= 4, 30, "a backlog of 4")
        await asyncio.sleep(2)  # held for over a second: the partition is paused in librdkafka
        async with running(b, assigned=False):
            await wait_for(lambda: len(a.assigned_partitions + b.assigned_partitions) == 1, 40, "a rebalance")
            await asyncio.sleep(0.5)
            gate.set()
        # b left: the partition is a's again, and must be fetched although it was paused before.
        await wait_for(lambda: a.assigned_partitions == [0], 40, "a owns the partition again")
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 20, 40, "all 20 committed")
