"""Crashes, graceful stops and rebalances lose nothing; duplicates only for uncommitted work."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kq.kq_helpers import FAST_GROUP, Recorder, committed, create_topics, produce_raw, running, wait_for

from harness.servers import Tansu
from queue_engine.errors import Unavailable
from queue_engine.kq import KafkaConsumer, KafkaMessage, KafkaPusher, SyncKafkaConsumer
from queue_engine.policy import Outcome

CRASH_CONSUMER = Path(__file__).with_name("crash_consumer.py")


def _lines(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(p), int(o)) for p, o in (line.split() for line in path.read_text().splitlines() if line)]


async def test_killed_consumer_restarted_redelivers_exactly_the_uncommitted(
    bootstrap: str, unique: str, tmp_path: Path
) -> None:
    partitions, total = 2, 600
    create_topics(bootstrap, (unique, partitions))
    produce_raw(bootstrap, unique, [(f"k{i % 8}".encode(), f"{i}".encode()) for i in range(total)])
    everything = set()
    for p, end in (await _ends(bootstrap, unique, partitions)).items():
        everything |= {(p, o) for o in range(end)}
    assert len(everything) == total

    outfile = tmp_path / "handled.txt"
    argv = [sys.executable, str(CRASH_CONSUMER), bootstrap, unique, unique, str(outfile)]
    proc = await asyncio.to_thread(subprocess.Popen, argv)
    try:
        deadline = time.monotonic() + 60
        while len(_lines(outfile)) < 150 and time.monotonic() < deadline:
            assert proc.poll() is None, "the consumer process died on its own"
            await asyncio.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)  # mid-batch: no chance to commit or leave the group
        proc.wait(10)
    first_run = _lines(outfile)
    assert 150 <= len(first_run) < total, "kill the consumer while it is still busy"
    assert len(set(first_run)) == len(first_run)
    at_kill = committed(bootstrap, unique, unique, partitions)

    # Committed means handled: nothing below a committed offset was skipped.
    for p in range(partitions):
        position = max(at_kill[p], 0)
        assert {(p, o) for o in range(position)} <= set(first_run)

    second = Recorder()
    consumer = KafkaConsumer([bootstrap], unique, unique, second, offset="first", extra=FAST_GROUP)
    async with running(consumer):
        await wait_for(
            lambda: set(first_run) | {(m.partition, m.offset) for m in second.seen} >= everything, 60
        )
        await asyncio.sleep(0.3)
    second_run = [(m.partition, m.offset) for m in second.seen]

    # Exactly the uncommitted ones come again: from each partition's committed offset on, once each.
    expected_again = {(p, o) for p, o in everything if o >= max(at_kill[p], 0)}
    assert sorted(second_run) == sorted(expected_again)
    duplicates = set(first_run) & set(second_run)
    # Duplicates are only messages handled before the kill whose commit had not happened yet.
    assert duplicates == {(p, o) for p, o in first_run if o >= max(at_kill[p], 0)}
    print(f"kill after {len(first_run)} handled: committed {at_kill}, {len(duplicates)} duplicate(s)")


async def _ends(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition  # noqa: PLC0415

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ends"})
    try:
        # Tansu's "latest" answer is off for multi-record batches, so count what is there instead.
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        ends: dict[int, int] = dict.fromkeys(range(partitions), 0)
        idle_since = time.monotonic()
        while time.monotonic() - idle_since < 1.5:
            records = consumer.consume(500, 0.2)
            for record in records:
                if record.error() is None:
                    ends[record.partition()] = max(ends[record.partition()], record.offset() + 1)
                    idle_since = time.monotonic()
        return ends
    finally:
        consumer.close()


async def test_two_members_share_partitions_and_a_leaving_one_loses_nothing(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 4))
    seen_a, seen_b = Recorder(), Recorder()

    async def slow_a(message: KafkaMessage) -> Outcome:
        await asyncio.sleep(0.005)
        return await seen_a(message)

    a = KafkaConsumer([bootstrap], unique, unique, slow_a, offset="first", extra=FAST_GROUP)
    b = KafkaConsumer([bootstrap], unique, unique, seen_b, offset="first", extra=FAST_GROUP)
    total = 800
    sent = 0
    split = asyncio.Event()

    async def keep_producing() -> None:
        # The second half waits for the split, so that each member has messages of its own
        # however slow the rebalance is on a loaded machine.
        nonlocal sent
        while sent < total:
            if sent >= total // 2:
                await split.wait()
            batch = [(f"k{i % 10}".encode(), f"{i}".encode()) for i in range(sent, sent + 40)]
            await asyncio.to_thread(produce_raw, bootstrap, unique, batch)
            sent += 40
            await asyncio.sleep(0.05)

    async with running(a):
        producer = asyncio.create_task(keep_producing())
        # b joins once a is handling: on a loaded machine a's first lease write and the
        # rebalance could otherwise leave a nothing to handle before it leaves.
        await wait_for(lambda: bool(seen_a.seen), 40, "a handling")
        async with running(b, assigned=False):
            await wait_for(lambda: bool(a.assigned_partitions) and bool(b.assigned_partitions), 40, "a split")
            assert set(a.assigned_partitions).isdisjoint(b.assigned_partitions)
            assert set(a.assigned_partitions) | set(b.assigned_partitions) == {0, 1, 2, 3}
            split.set()
            await wait_for(lambda: sent >= total // 2, 60, "half produced")
            await a.stop(grace=10)  # leaves mid-stream: b takes over all partitions
            await wait_for(lambda: b.assigned_partitions == [0, 1, 2, 3], 40, "b owns everything")
            await producer
            values = lambda: {m.value for m in seen_a.seen} | {m.value for m in seen_b.seen}  # noqa: E731
            await wait_for(lambda: len(values()) == total, 60, "every message")
            await wait_for(
                lambda: sum(committed(bootstrap, unique, unique, 4).values()) == total, 30, "commits"
            )
    assert values() == {f"{i}".encode() for i in range(total)}
    duplicates = len(seen_a.seen) + len(seen_b.seen) - total
    assert seen_a.seen and seen_b.seen
    print(f"a handled {len(seen_a.seen)}, b handled {len(seen_b.seen)}, {duplicates} duplicate(s)")


async def test_graceful_stop_finishes_in_flight_work_and_commits_it(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(f"k{i}".encode(), b"x") for i in range(3)])
    started, finished = [], []

    async def handle(message: KafkaMessage) -> Outcome:
        started.append(message.offset)
        await asyncio.sleep(1.0)
        finished.append(message.offset)
        return Outcome.success()

    consumer = KafkaConsumer([bootstrap], unique, unique, handle, offset="first", extra=FAST_GROUP)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: len(started) == 3, 40, "three in flight")
    await consumer.stop(grace=10)
    await asyncio.wait_for(task, 10)  # run() returns after stop
    assert sorted(finished) == [0, 1, 2]
    assert committed(bootstrap, unique, unique, 1) == {0: 3}
    assert consumer.health() == (False, "stopping")


async def test_stop_after_grace_hands_unfinished_work_back(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(b"k", b"slow")])
    first = Recorder(lambda m: asyncio.sleep(30, Outcome.success()))
    consumer = KafkaConsumer([bootstrap], unique, unique, first, offset="first", extra=FAST_GROUP)
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: len(first.seen) == 1, 40, "in flight")
    await consumer.stop(grace=0.2)
    await asyncio.wait_for(task, 10)
    assert committed(bootstrap, unique, unique, 1)[0] < 1  # not committed: handed back

    again = Recorder()
    async with running(KafkaConsumer([bootstrap], unique, unique, again, offset="first", extra=FAST_GROUP)):
        await wait_for(lambda: len(again.seen) == 1, 40, "redelivery")
    assert again.seen[0].value == b"slow"


def test_sync_consumer_runs_a_plain_function_until_stopped(bootstrap: str, unique: str) -> None:
    import threading  # noqa: PLC0415

    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(None, f"{i}".encode()) for i in range(5)])
    got: list[bytes] = []
    consumer = SyncKafkaConsumer(
        [bootstrap],
        unique,
        unique,
        lambda m: got.append(m.value) or Outcome.success(),
        offset="first",
        extra=FAST_GROUP,
    )
    thread = threading.Thread(target=consumer.run)
    thread.start()
    deadline = time.monotonic() + 40
    while len(got) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    consumer.stop(grace=5)
    thread.join(20)
    assert not thread.is_alive()
    assert sorted(got) == [f"{i}".encode() for i in range(5)]
    assert committed(bootstrap, unique, unique, 1) == {0: 5}


async def test_health_reports_a_lost_broker_and_recovers(own_kafka_broker: Tansu, unique: str) -> None:
    create_topics(own_kafka_broker.bootstrap, (unique, 1))
    consumer = KafkaConsumer(
        [own_kafka_broker.bootstrap], unique, unique, Recorder(), offset="first", extra=FAST_GROUP
    )
    async with running(consumer):
        assert consumer.health()[0]
        own_kafka_broker.kill()
        await wait_for(lambda: not consumer.health()[0], 30, "unhealthy")
        assert "unreachable" in consumer.health()[1]
        own_kafka_broker.start()
        # The in-memory broker came back empty: the topic is gone, and health says so.
        await wait_for(lambda: "does not exist" in consumer.health()[1], 30, "the lost topic reported")
        create_topics(own_kafka_broker.bootstrap, (unique, 1))
        await wait_for(lambda: consumer.health()[0], 30, "healthy again")


async def test_stop_before_run_makes_run_return_at_once(bootstrap: str, unique: str) -> None:
    consumer = KafkaConsumer([bootstrap], unique, unique, Recorder(), extra=FAST_GROUP)
    await consumer.stop()
    await asyncio.wait_for(consumer.run(), 5)


async def test_a_rebalance_lets_in_flight_work_finish_and_commits_it(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(b"k", b"slow")])
    handled: list[KafkaMessage] = []
    started = asyncio.Event()

    async def slow(message: KafkaMessage) -> Outcome:
        started.set()
        await asyncio.sleep(2)
        handled.append(message)
        return Outcome.success()

    a = KafkaConsumer([bootstrap], unique, unique, slow, offset="first", extra=FAST_GROUP)
    b = KafkaConsumer([bootstrap], unique, unique, slow, offset="first", extra=FAST_GROUP)
    async with running(a):
        await asyncio.wait_for(started.wait(), 30)
        async with running(b, assigned=False):
            # b joining revokes a's partition while the handler is still busy with offset 0.
            await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 1, 40, "the commit")
            await wait_for(lambda: len(a.assigned_partitions + b.assigned_partitions) == 1, 40, "a new owner")
            await asyncio.sleep(1)
    assert [m.offset for m in handled] == [0]  # finished during the revoke, committed, not redone


async def test_a_durable_broker_restart_loses_no_acknowledged_message(
    durable_kafka_broker: Tansu, unique: str
) -> None:
    bootstrap = durable_kafka_broker.bootstrap
    create_topics(bootstrap, (unique, 1))
    seen = Recorder()
    pusher = KafkaPusher([bootstrap], unique, extra={"message.timeout.ms": 3000})
    consumer = KafkaConsumer([bootstrap], unique, unique, seen, offset="first", extra=FAST_GROUP)
    acked: list[bytes] = []
    async with running(consumer):
        for i in range(10):
            await pusher.push(f"before{i}".encode())
            acked.append(f"before{i}".encode())
        await wait_for(lambda: len(seen.seen) == 10, 30, "the first ten")

        durable_kafka_broker.kill()
        with pytest.raises(Unavailable):
            await pusher.push(b"during")  # refused loudly, so the caller knows to retry
        durable_kafka_broker.start()

        for i in range(10):
            await _push_retrying(pusher, f"after{i}".encode())
            acked.append(f"after{i}".encode())
        await wait_for(lambda: set(acked) <= {m.value for m in seen.seen}, 60, "every acked message")
    await pusher.close(timeout=5)


async def _push_retrying(pusher: KafkaPusher, value: bytes, attempts: int = 5) -> None:
    """What a caller does with Unavailable: try again (the pusher must recover by itself)."""
    for attempt in range(attempts):
        try:
            await pusher.push(value)
            return
        except Unavailable:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.5)


def test_sync_consumer_a_hung_handler_holds_one_thread_and_never_starves_the_others(
    bootstrap: str, unique: str
) -> None:
    import threading  # noqa: PLC0415

    from queue_engine.kq import read_dead_letters  # noqa: PLC0415
    from queue_engine.policy import Backoff, DeliveryPolicy  # noqa: PLC0415

    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(b"h", b"hang")] + [(None, f"{i}".encode()) for i in range(10)])
    release = threading.Event()
    hung_calls: list[int] = []
    healthy: list[bytes] = []

    def handle(message: KafkaMessage) -> Outcome:
        if message.value == b"hang":
            hung_calls.append(message.attempt)
            release.wait(60)  # hangs far past the timeout
            return Outcome.success()
        healthy.append(message.value)
        return Outcome.success()

    policy = DeliveryPolicy(max_attempts=3, backoff=Backoff(0.05, 0.1), timeout=0.5)
    consumer = SyncKafkaConsumer(
        [bootstrap], unique, unique, handle, offset="first", concurrency=2, policy=policy, extra=FAST_GROUP
    )
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        deadline = time.monotonic() + 40
        while committed(bootstrap, unique, unique, 1)[0] != 11 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert committed(bootstrap, unique, unique, 1)[0] == 11
        assert sorted(healthy) == sorted(f"{i}".encode() for i in range(10))  # each really ran
        assert hung_calls == [1]  # retries waited for the hung call instead of taking more threads
        (letter,) = asyncio.run(read_dead_letters([bootstrap], f"{unique}.dlq"))
        assert letter.value == b"hang"
        # Handler threads never keep the process from exiting.
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("kq-handler"))
    finally:
        consumer.stop(grace=5)
        thread.join(20)
        release.set()
    assert not thread.is_alive()


async def test_health_says_the_topic_does_not_exist_until_it_is_created(bootstrap: str, unique: str) -> None:
    seen = Recorder()
    consumer = KafkaConsumer([bootstrap], unique, unique, seen, offset="first", extra=FAST_GROUP)
    async with running(consumer, assigned=False):
        await wait_for(lambda: "does not exist" in consumer.health()[1], 30, "the missing topic reported")
        assert consumer.health() == (False, f"topic {unique} does not exist")
        create_topics(bootstrap, (unique, 1))
        produce_raw(bootstrap, unique, [(None, b"x")])
        await wait_for(lambda: consumer.health()[0], 60, "healthy once the topic exists")
        await wait_for(lambda: len(seen.seen) == 1, 60, "the message")


async def test_stop_does_not_wait_out_a_hold_for_an_unavailable_app(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(None, b"1"), (None, b"2")])
    # The app is down and asks for a minute: the worker then waits for it before the next message.
    seen = Recorder(lambda m: Outcome.unavailable("starting up", after=60))
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, seen, offset="first", concurrency=1, extra=FAST_GROUP
    )
    task = asyncio.create_task(consumer.run())
    await wait_for(lambda: len(seen.seen) == 1, 40, "the first delivery")
    await asyncio.sleep(0.5)  # the worker has taken the second message and waits for the app
    # Nothing is in a handler call, so stop closes at once instead of after the grace (or the minute).
    await asyncio.wait_for(consumer.stop(grace=120), 20)
    await asyncio.wait_for(task, 10)
    assert committed(bootstrap, unique, unique, 1)[0] < 1  # handed back
