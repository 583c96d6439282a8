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


async def test_a_dead_letter_acked_after_the_revoke_never_rewinds_the_new_owners_commit(
    bootstrap: str, unique: str
) -> None:
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 2), (dlq, 1))
    for partition in (0, 1):
        produce_raw(bootstrap, unique, [(None, f"{i}".encode()) for i in range(10)], partition=partition)
    gate = asyncio.Event()

    async def answer(message: KafkaMessage) -> Outcome:
        if message.offset == 0:
            return Outcome.drop("unwanted")
        await gate.wait()
        return Outcome.success()

    a_seen = Recorder(answer)
    dead = metrics.DEAD_LETTERED.labels("kafka", unique, "drop")  # counts acked dead letters
    before = dead._value.get()
    # a's dead-letter producer holds each write 8 s (linger), so the acks of a's first dead
    # letters arrive long after the rebalance below took the partitions away.
    a = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        a_seen,
        offset="first",
        concurrency=32,  # every message of both partitions in the handler at once
        revoke_grace=0.5,
        extra={**FAST_GROUP, "linger.ms": 8000},
    )
    b = KafkaConsumer([bootstrap], unique, unique, Recorder(), offset="first", extra=FAST_GROUP)
    async with running(a):
        await wait_for(lambda: sum(m.offset == 0 for m in a_seen.seen) == 2, 30, "both offsets 0 dropped")
        async with running(b, assigned=False):
            # Two partitions, two members: b takes one of them while a's dead letter is in flight.
            await wait_for(lambda: bool(a.assigned_partitions) and bool(b.assigned_partitions), 40, "a split")
            gate.set()
            await wait_for(
                lambda: committed(bootstrap, unique, unique, 2) == {0: 10, 1: 10}, 40, "all committed"
            )
            # a's two first dead letters (acked after the revoke) and its second one of its own partition.
            await wait_for(lambda: dead._value.get() - before >= 3, 40, "a's dead letters acked")
            await asyncio.sleep(1)  # time for a wrong commit to go out
            assert committed(bootstrap, unique, unique, 2) == {0: 10, 1: 10}


async def test_a_key_never_runs_beside_its_call_abandoned_at_a_revoke(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 2))
    for partition in (0, 1):
        produce_raw(bootstrap, unique, [(b"k", b"first"), (b"k", b"second")], partition=partition)
    active: dict[int, int] = {0: 0, 1: 0}
    overlaps: list[tuple[int, int]] = []
    started: set[tuple[int, int]] = set()

    async def handle(message: KafkaMessage) -> Outcome:
        place = (message.partition, message.offset)
        if active[message.partition]:
            overlaps.append(place)
        active[message.partition] += 1
        try:
            if place not in started:  # the first call of each message outlasts the revoke grace
                started.add(place)
                await asyncio.sleep(8)
            return Outcome.success()
        finally:
            active[message.partition] -= 1

    a = KafkaConsumer([bootstrap], unique, unique, handle, offset="first", revoke_grace=0.5, extra=FAST_GROUP)
    b = KafkaConsumer([bootstrap], unique, unique, Recorder(), offset="first", extra=FAST_GROUP)
    async with running(a):
        await wait_for(lambda: len(started) == 2, 30, "key k in the handler on both partitions")
        async with running(b, assigned=False):
            # Two partitions, two members: a keeps one of them and gets its key k again while
            # the abandoned call for it still sleeps.
            await wait_for(lambda: bool(a.assigned_partitions) and bool(b.assigned_partitions), 40, "a split")
            await wait_for(
                lambda: committed(bootstrap, unique, unique, 2) == {0: 2, 1: 2}, 40, "all committed"
            )
    assert overlaps == []
