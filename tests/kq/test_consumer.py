"""The consumer: commit only what is finished, order per key, retries, dead letters, offsets."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict

from kq.kq_helpers import (
    FAST_GROUP,
    FAST_POLICY,
    Recorder,
    committed,
    create_topics,
    produce_raw,
    running,
    wait_for,
)

from queue_engine import metrics
from queue_engine.kq import KafkaConsumer, KafkaMessage, read_dead_letters, replay_dead_letters
from queue_engine.policy import Backoff, DeliveryPolicy, Outcome, Verdict


async def test_same_key_in_offset_order_with_concurrency_8_over_1000_messages(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 3))
    keys = [f"key{k}".encode() for k in range(12)]
    produce_raw(bootstrap, unique, [(keys[i % 12], f"{i}".encode()) for i in range(1000)])

    active: dict[bytes | None, int] = defaultdict(int)
    overlap_same_key = 0
    running_now = 0
    max_running = 0
    order: dict[bytes | None, list[int]] = defaultdict(list)

    async def handle(message: KafkaMessage) -> Outcome:
        nonlocal overlap_same_key, running_now, max_running
        active[message.key] += 1
        running_now += 1
        max_running = max(max_running, running_now)
        overlap_same_key += active[message.key] > 1
        await asyncio.sleep(random.uniform(0, 0.004))
        order[message.key].append(int(message.value))
        active[message.key] -= 1
        running_now -= 1
        return Outcome.success()

    consumer = KafkaConsumer(
        [bootstrap], unique, unique, handle, offset="first", concurrency=8, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: sum(map(len, order.values())) >= 1000, 60, "1000 messages")
        await wait_for(lambda: sum(committed(bootstrap, unique, unique, 3).values()) == 1000, 20, "commits")
        lag = await consumer.lag()
    assert overlap_same_key == 0
    assert 1 < max_running <= 8  # different keys really ran side by side, never more than 8
    assert sorted(v for seq in order.values() for v in seq) == list(range(1000))  # each exactly once
    for key, seq in order.items():
        assert seq == sorted(seq), f"key {key!r} out of order"
    assert lag == {0: 0, 1: 0, 2: 0}


async def test_commit_never_passes_an_unfinished_message(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(
        bootstrap, unique, [(b"slow" if i == 3 else f"k{i}".encode(), f"{i}".encode()) for i in range(20)]
    )
    release = asyncio.Event()
    done: list[int] = []

    async def handle(message: KafkaMessage) -> Outcome:
        if message.key == b"slow":
            await release.wait()
        done.append(message.offset)
        return Outcome.success()

    consumer = KafkaConsumer([bootstrap], unique, unique, handle, offset="first", extra=FAST_GROUP)
    async with running(consumer):
        await wait_for(lambda: len(done) == 19, 30, "the other 19")
        await asyncio.sleep(0.5)  # the poll thread commits every 0.1 s: give it the chance to go wrong
        assert committed(bootstrap, unique, unique, 1)[0] == 3  # stuck at the unfinished offset 3
        assert await consumer.lag() == {0: 17}
        assert metrics.KAFKA_LAG.labels(unique, "0")._value.get() == 17
        release.set()
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 20, 20, "commit to 20")


async def test_failure_then_success_retries_with_attempt_numbers(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(b"k", b"flaky"), (b"k", b"after")])
    calls = {"n": 0}

    def answer(message: KafkaMessage) -> Outcome:
        if message.value == b"flaky":
            calls["n"] += 1
            if calls["n"] == 1:
                raise RuntimeError("boom")
            if calls["n"] == 2:
                return Outcome.retry("not yet", after=0.05)
        return Outcome.success()

    recorder = Recorder(answer)
    retried = metrics.RETRIED.labels("kafka", unique)
    before = retried._value.get()
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=FAST_POLICY, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 2, 30, "both committed")
    assert [(m.value, m.attempt) for m in recorder.seen] == [
        (b"flaky", 1),
        (b"flaky", 2),
        (b"flaky", 3),
        (b"after", 1),
    ]
    assert retried._value.get() - before == 2
    assert await read_dead_letters([bootstrap], f"{unique}.dlq") == []


async def test_a_handler_over_its_timeout_is_retried(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(None, b"x")])

    async def answer(message: KafkaMessage) -> Outcome:
        if message.attempt == 1:
            await asyncio.sleep(10)
        return Outcome.success()

    recorder = Recorder(answer)
    policy = DeliveryPolicy(max_attempts=3, backoff=Backoff(0.05, 0.1), timeout=0.3)
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=policy, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 1, 30, "commit")
    assert [m.attempt for m in recorder.seen] == [1, 2]


async def test_dead_letter_after_max_attempts_with_headers_then_commit(bootstrap: str, unique: str) -> None:
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 2), (dlq, 1))
    produce_raw(bootstrap, unique, [(b"poison", b"bad"), (b"fine", b"good")])
    recorder = Recorder(lambda m: Outcome.retry("app says 503") if m.value == b"bad" else Outcome.success())
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=FAST_POLICY, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: sum(committed(bootstrap, unique, unique, 2).values()) == 2, 30, "commits")
    bad = [m for m in recorder.seen if m.value == b"bad"]
    assert [m.attempt for m in bad] == [1, 2, 3]
    letters = await read_dead_letters([bootstrap], dlq)
    assert len(letters) == 1
    letter = letters[0]
    assert (letter.key, letter.value) == (b"poison", b"bad")
    assert letter.header("x-original-topic") == unique.encode()
    assert letter.header("x-original-partition") == str(bad[0].partition).encode()
    assert letter.header("x-original-offset") == str(bad[0].offset).encode()
    assert letter.header("x-attempts") == b"3"
    assert letter.header("x-last-error") == b"app says 503"
    assert letter.header("x-dead-letter-reason") == b"max_attempts"


async def test_drop_goes_to_the_dead_letter_topic_at_once_and_replay_sends_it_back(
    bootstrap: str, unique: str
) -> None:
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 1), (dlq, 1))
    produce_raw(bootstrap, unique, [(b"k", b"unwanted")])
    recorder = Recorder(lambda m: Outcome.drop("400 bad request") if m.offset == 0 else Outcome.success())
    dead = metrics.DEAD_LETTERED.labels("kafka", unique, "drop")
    before = dead._value.get()
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=FAST_POLICY, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 1, 30, "commit")
        assert [m.attempt for m in recorder.seen] == [1]
        letters = await read_dead_letters([bootstrap], dlq)
        assert [(m.value, m.header("x-attempts"), m.header("x-dead-letter-reason")) for m in letters] == [
            (b"unwanted", b"1", b"drop")
        ]
        assert dead._value.get() - before == 1

        # Replay puts it back on the original topic (once), where the consumer gets it again.
        assert await replay_dead_letters([bootstrap], dlq) == 1
        assert await replay_dead_letters([bootstrap], dlq) == 0
        await wait_for(lambda: len(recorder.seen) == 2, 30, "the replayed copy")
    replayed = recorder.seen[1]
    assert (replayed.key, replayed.value, replayed.offset) == (b"k", b"unwanted", 1)
    assert replayed.header("x-original-topic") is None


async def test_dead_letters_count_as_dead_lettered_not_as_published(bootstrap: str, unique: str) -> None:
    """queue_messages_published counts what an app pushes; a dead letter is counted only once,
    as dead-lettered (the consumer's dead-letter producer used to add it to published too)."""
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 1), (dlq, 1))
    produce_raw(bootstrap, unique, [(b"k", b"unwanted"), (b"k", b"fine")])
    recorder = Recorder(lambda m: Outcome.drop("400 bad request") if m.offset == 0 else Outcome.success())
    dead = metrics.DEAD_LETTERED.labels("kafka", unique, "drop")
    published = [metrics.PUBLISHED.labels("kafka", unique, result) for result in ("success", "error")]
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=FAST_POLICY, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 2, 30, "commit")
    assert [
        (m.value, m.header("x-dead-letter-reason")) for m in await read_dead_letters([bootstrap], dlq)
    ] == [(b"unwanted", b"drop")]
    assert dead._value.get() == 1
    assert [counter._value.get() for counter in published] == [0, 0]


async def test_unavailable_app_burns_no_attempts(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(b"k", b"x")])
    recorder = Recorder(
        lambda m: Outcome.unavailable("connection refused") if len(recorder.seen) <= 3 else Outcome.success()
    )
    policy = DeliveryPolicy(max_attempts=1, backoff=Backoff(0.05, 0.1))
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=policy, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 1, 30, "commit")
    assert [m.attempt for m in recorder.seen] == [1, 1, 1, 1]  # handed back, never counted
    assert await read_dead_letters([bootstrap], f"{unique}.dlq") == []


async def test_offset_first_reads_history_and_last_only_new(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    # One batch each: tansu 0.6 answers "latest" with the last batch's base offset + 1, so a
    # multi-record last batch would be partly re-read by a fresh "last" group (a broker quirk).
    produce_raw(bootstrap, unique, [(None, b"old1")])
    produce_raw(bootstrap, unique, [(None, b"old2")])
    first, last = Recorder(), Recorder()
    from_first = KafkaConsumer(
        [bootstrap], unique, f"{unique}-first", first, offset="first", extra=FAST_GROUP
    )
    from_last = KafkaConsumer([bootstrap], unique, f"{unique}-last", last, offset="last", extra=FAST_GROUP)
    async with running(from_first), running(from_last):
        await wait_for(lambda: len(first.seen) == 2, 30, "history")
        # Keep adding until the "last" member (which starts at the end once it has a position)
        # sees one: robust to however long it takes to look up that position.
        sent = 0
        while not last.seen and sent < 40:
            produce_raw(bootstrap, unique, [(None, f"new{sent}".encode())])
            sent += 1
            await asyncio.sleep(0.5)
        await wait_for(lambda: len(first.seen) == 2 + sent, 30, "the new messages")
    assert [m.value for m in first.seen] == [b"old1", b"old2"] + [f"new{i}".encode() for i in range(sent)]
    assert last.seen and all(m.value.startswith(b"new") for m in last.seen)


async def test_a_stuck_partition_is_paused_so_the_backlog_stays_bounded(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(b"stuck" if i == 0 else None, b"x" * 100) for i in range(3000)])
    release = asyncio.Event()

    async def handle(message: KafkaMessage) -> Outcome:
        if message.key == b"stuck":
            await release.wait()
        return Outcome.success()

    received = metrics.RECEIVED.labels("kafka", unique)
    before = received._value.get()
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, handle, offset="first", max_uncommitted=100, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: received._value.get() - before >= 100, 30, "the first 100")
        await asyncio.sleep(1.5)
        held = received._value.get() - before
        assert held < 1000, f"{held} messages taken in while offset 0 was stuck"
        release.set()
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 3000, 60, "everything")


async def test_a_handler_cancelled_from_inside_is_a_retry_not_a_dead_worker(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(b"k", b"x"), (b"k", b"y")])

    async def answer(message: KafkaMessage) -> Outcome:
        if message.value == b"x" and message.attempt == 1:
            raise asyncio.CancelledError  # e.g. an HTTP client cancelling its own request
        return Outcome.success()

    recorder = Recorder(answer)
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        recorder,
        offset="first",
        policy=FAST_POLICY,
        concurrency=1,
        extra=FAST_GROUP,
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 2, 30, "both committed")
    assert [(m.value, m.attempt) for m in recorder.seen] == [(b"x", 1), (b"x", 2), (b"y", 1)]


async def test_a_drop_without_a_reason_is_dead_lettered_once_and_committed(
    bootstrap: str, unique: str
) -> None:
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 1), (dlq, 1))
    produce_raw(bootstrap, unique, [(b"k", b"unwanted")])
    silent_drop = Outcome(Verdict.DROP, None)  # type: ignore[arg-type]  # what a sloppy handler builds
    recorder = Recorder(lambda m: silent_drop)
    consumer = KafkaConsumer(
        [bootstrap], unique, unique, recorder, offset="first", policy=FAST_POLICY, extra=FAST_GROUP
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 1, 30, "commit")
        await asyncio.sleep(1.0)  # room for a wrong second delivery
    assert [m.attempt for m in recorder.seen] == [1]
    (letter,) = await read_dead_letters([bootstrap], dlq)
    assert (letter.value, letter.header("x-last-error"), letter.header("x-dead-letter-reason")) == (
        b"unwanted",
        b"",
        b"drop",
    )
