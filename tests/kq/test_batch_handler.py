"""The batch entry point (``batch_handler``): one call and one deadline per batch, each
message's outcome settled as in single delivery, per-key order kept (batch_dispatch.py)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import Sequence

import pytest
from kq.kq_helpers import (
    FAST_GROUP,
    FAST_POLICY,
    committed,
    create_topics,
    produce_raw,
    read_raw,
    running,
    wait_for,
)

from queue_engine import metrics
from queue_engine.errors import ConfigError
from queue_engine.kq import KafkaConsumer, KafkaMessage, read_dead_letters
from queue_engine.policy import Backoff, DeliveryPolicy, Outcome


class Batches:
    """A batch handler that records each batch (value, attempt) and answers through ``answer``."""

    def __init__(self, answer: object = None) -> None:
        self.batches: list[list[tuple[bytes, int]]] = []
        self.answer = answer

    async def __call__(self, messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        self.batches.append([(m.value, m.attempt) for m in messages])
        if self.answer is not None:
            return await self.answer(messages)  # type: ignore[operator, no-any-return]
        return [Outcome.success()] * len(messages)

    def seen(self, value: bytes) -> list[int]:
        return [attempt for batch in self.batches for v, attempt in batch if v == value]


def test_exactly_one_of_handler_and_batch_handler_and_batch_settings_only_with_it() -> None:
    async def one(message: KafkaMessage) -> Outcome:
        return Outcome.success()

    async def many(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        return [Outcome.success()] * len(messages)

    with pytest.raises(ConfigError, match="give exactly one"):
        KafkaConsumer(["127.0.0.1:9092"], "t", "g", one, batch_handler=many)
    with pytest.raises(ConfigError, match="give exactly one"):
        KafkaConsumer(["127.0.0.1:9092"], "t", "g")
    with pytest.raises(ConfigError, match="only with batch_handler"):
        KafkaConsumer(["127.0.0.1:9092"], "t", "g", one, max_batch=10)
    with pytest.raises(ConfigError, match="max_batch: 0"):
        KafkaConsumer(["127.0.0.1:9092"], "t", "g", batch_handler=many, max_batch=0)
    with pytest.raises(ConfigError, match="max_batch_wait"):
        KafkaConsumer(["127.0.0.1:9092"], "t", "g", batch_handler=many, max_batch_wait=-1)


async def test_batches_keep_key_order_within_and_across_batches_with_retries(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 3))
    keys = [f"key{k}".encode() for k in range(10)]
    total = 600
    produce_raw(bootstrap, unique, [(keys[i % 10], f"{i}".encode()) for i in range(total)])
    active: set[tuple[int, bytes | None]] = set()
    same_key_together = 0
    sizes: list[int] = []
    calls: dict[tuple[int, bytes | None], list[tuple[int, int]]] = defaultdict(list)
    done: set[int] = set()

    async def handle(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        nonlocal same_key_together
        sizes.append(len(messages))
        places = [(m.partition, m.key) for m in messages]
        if len(set(places)) != len(places) or active & set(places):
            same_key_together += 1  # two of one key in a batch, or beside another batch
        active.update(places)
        await asyncio.sleep(random.uniform(0, 0.004))
        active.difference_update(places)
        outcomes = []
        for m in messages:
            calls[m.partition, m.key].append((m.offset, m.attempt))
            if int(m.value) % 7 == 0 and m.attempt == 1:
                outcomes.append(Outcome.retry("once more", after=0.01))
            else:
                done.add(int(m.value))
                outcomes.append(Outcome.success())
        return outcomes

    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        batch_handler=handle,
        max_batch=8,
        max_batch_wait=0.005,
        offset="first",
        concurrency=3,
        policy=FAST_POLICY,
        extra=FAST_GROUP,
    )
    async with running(consumer):
        await wait_for(lambda: len(done) == total, 60, f"{total} messages")
        await wait_for(lambda: sum(committed(bootstrap, unique, unique, 3).values()) == total, 20, "commits")
    assert same_key_together == 0
    assert max(sizes) > 1 and max(sizes) <= 8  # real batches, never over max_batch
    for place, seq in calls.items():
        # A key's calls in offset order; a retried message is called again (attempt 2) before
        # its key's next message, whether alone or in a later batch.
        assert seq == sorted(seq), f"{place} out of order: {seq}"
        retried = [offset for offset, attempt in seq if attempt == 2]
        for offset in retried:
            assert seq[seq.index((offset, 1)) + 1] == (offset, 2)


async def test_a_retried_message_of_a_batch_comes_back_counted_and_is_dead_lettered_while_the_rest_commit(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(f"k{i}".encode(), b"bad" if i == 3 else b"v%d" % i) for i in range(10)])

    async def answer(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        return [Outcome.retry("app says no") if m.value == b"bad" else Outcome.success() for m in messages]

    handler = Batches(answer)
    delivered = metrics.DELIVERED.labels("kafka", unique, "success")
    before = delivered._value.get()
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        batch_handler=handler,
        max_batch_wait=0.5,
        offset="first",
        policy=FAST_POLICY,
        extra=FAST_GROUP,
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 10, 30, "all committed")
    assert handler.seen(b"bad") == [1, 2, 3]
    assert all(handler.seen(b"v%d" % i) == [1] for i in range(10) if i != 3)
    assert len(handler.batches[0]) > 1  # bad's first call was in a batch with the others
    [letter] = await read_dead_letters([bootstrap], f"{unique}.dlq")
    assert (letter.value, letter.header("x-attempts")) == (b"bad", b"3")
    assert letter.header("x-last-error") == b"app says no"
    assert delivered._value.get() - before == 9  # counted per message


async def test_a_batch_over_its_timeout_gives_every_message_the_timeout(bootstrap: str, unique: str) -> None:
    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(f"k{i}".encode(), b"v%d" % i) for i in range(5)])

    async def answer(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        await asyncio.sleep(10)  # every call overruns its batch's deadline
        return [Outcome.success()] * len(messages)

    handler = Batches(answer)
    policy = DeliveryPolicy(max_attempts=2, backoff=Backoff(0.05, 0.1), timeout=0.3)
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        batch_handler=handler,
        max_batch_wait=0.5,
        offset="first",
        policy=policy,
        extra=FAST_GROUP,
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 5, 30, "all dead-lettered")
    assert len(handler.batches[0]) > 1
    # (read_raw: tansu reports a batch's base offset + 1 as its end, and these 5 went as one batch)
    letters = read_raw(bootstrap, f"{unique}.dlq", 1, 5)
    assert sorted(letter.value() for letter in letters) == [b"v%d" % i for i in range(5)]
    assert {dict(letter.headers())["x-last-error"] for letter in letters} == {
        b"handler timed out after 300ms"
    }
    assert all(handler.seen(b"v%d" % i) == [1, 2] for i in range(5))


async def test_a_batch_handler_that_raises_or_miscounts_retries_every_message(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 1), (f"{unique}.dlq", 1))
    produce_raw(bootstrap, unique, [(f"k{i}".encode(), b"v%d" % i) for i in range(5)])

    async def answer(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        attempt = messages[0].attempt
        if attempt == 1:
            raise RuntimeError("bug in the app")
        if attempt == 2:
            return [Outcome.success()] * (len(messages) - 1)  # one answer short
        return [Outcome.success()] * len(messages)

    handler = Batches(answer)
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        batch_handler=handler,
        max_batch_wait=0.5,
        offset="first",
        policy=FAST_POLICY,
        extra=FAST_GROUP,
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 5, 30, "all committed")
    assert len(handler.batches[0]) > 1
    assert all(handler.seen(b"v%d" % i) == [1, 2, 3] for i in range(5)), handler.batches
    assert await read_dead_letters([bootstrap], f"{unique}.dlq") == []


async def test_a_result_arriving_after_a_revoke_mid_batch_is_never_committed(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 2))
    for partition in (0, 1):
        produce_raw(bootstrap, unique, [(b"k", b"only")], partition=partition)
    release = asyncio.Event()
    in_handler: set[int] = set()

    async def handle(messages: Sequence[KafkaMessage]) -> Sequence[Outcome]:
        for m in messages:
            in_handler.add(m.partition)
        if any(m.attempt == 1 for m in messages) and not release.is_set():
            await release.wait()  # outlasts the revoke grace, answers after the revoke
        return [Outcome.success()] * len(messages)

    never = asyncio.Event()

    async def hold(message: KafkaMessage) -> Outcome:  # the new owner never finishes it
        await never.wait()
        return Outcome.retry("stopping")

    a = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        batch_handler=handle,
        concurrency=2,
        offset="first",
        revoke_grace=0.5,
        policy=DeliveryPolicy(timeout=60),
        extra=FAST_GROUP,
    )
    b = KafkaConsumer([bootstrap], unique, unique, hold, offset="first", extra=FAST_GROUP)
    async with running(a):
        await wait_for(lambda: in_handler == {0, 1}, 30, "both partitions' messages in the handler")
        async with running(b, assigned=False):
            await wait_for(lambda: bool(a.assigned_partitions) and bool(b.assigned_partitions), 40, "a split")
            [moved] = b.assigned_partitions
            await wait_for(lambda: moved not in a._partitions, 10, "the revoke on a")
            release.set()  # a's batch answers SUCCESS for the moved partition's message, too late
            [kept] = a.assigned_partitions
            await wait_for(lambda: committed(bootstrap, unique, unique, 2)[kept] == 1, 30, "a's own commit")
            await asyncio.sleep(1)  # time for a wrong commit to go out
            assert committed(bootstrap, unique, unique, 2)[moved] != 1
            never.set()


async def test_a_backlog_of_few_keys_goes_in_partial_batches_without_waiting(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(b"ab"[i % 2 : i % 2 + 1], b"v%d" % i) for i in range(10)])
    handler = Batches()
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        batch_handler=handler,
        max_batch=100,
        max_batch_wait=600,  # a partial batch of a trickle would wait this long
        offset="first",
        extra=FAST_GROUP,
    )
    async with running(consumer):
        # Two keys, one message of each per batch: with more of theirs waiting, each batch goes
        # at once (only the last, with nothing behind it, would wait for more).
        await wait_for(lambda: sum(map(len, handler.batches)) >= 8, 30, "the backlog's batches")
    assert all(len(batch) <= 2 for batch in handler.batches)
