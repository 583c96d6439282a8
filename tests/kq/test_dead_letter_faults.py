"""Dead letters that cannot be written as they are: too large, or a topic the broker refuses."""

from __future__ import annotations

import asyncio
import logging

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

from queue_engine.kq import KafkaConsumer, read_dead_letters, replay_dead_letters
from queue_engine.policy import Outcome


async def test_a_dead_letter_too_large_with_its_headers_is_written_without_its_body(
    bootstrap: str, unique: str
) -> None:
    dlq = f"{unique}.dlq"
    create_topics(bootstrap, (unique, 1), (dlq, 1))
    produce_raw(bootstrap, unique, [(b"k", b"p" * 900), (b"other", b"fine")])
    recorder = Recorder(lambda m: Outcome.drop("unwanted") if m.offset == 0 else Outcome.success())
    # A producer limit the 900-byte body fits, but not with the dead-letter headers on top.
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        recorder,
        offset="first",
        policy=FAST_POLICY,
        extra={**FAST_GROUP, "message.max.bytes": 1000},
    )
    async with running(consumer):
        await wait_for(lambda: committed(bootstrap, unique, unique, 1)[0] == 2, 30, "both committed")
        assert consumer.health()[0]
    assert [m.offset for m in recorder.seen] == [0, 1]  # no re-delivery to the handler
    (letter,) = await read_dead_letters([bootstrap], dlq)
    assert (letter.key, letter.value) == (b"k", b"")
    assert letter.header("x-dead-letter-dropped") == b"body"
    assert letter.header("x-original-value-bytes") == b"900"
    assert letter.header("x-original-offset") == b"0"
    assert letter.header("x-dead-letter-reason") == b"drop"
    # Replaying an empty body would be wrong: it is skipped (the original is at x-original-offset).
    assert await replay_dead_letters([bootstrap], dlq) == 0


async def test_a_refused_dead_letter_topic_is_reported_and_retried_with_a_growing_delay(
    bootstrap: str, unique: str
) -> None:
    create_topics(bootstrap, (unique, 1))
    produce_raw(bootstrap, unique, [(b"k", b"unwanted")])
    recorder = Recorder(lambda m: Outcome.drop("unwanted"))
    bad_dlq = f"{unique} dlq"  # the broker answers "invalid topic" to every write
    # Each refused write logs one error (dead-letter writes are not counted as published).
    refused: list[logging.LogRecord] = []
    counter = logging.Handler(logging.ERROR)
    counter.emit = lambda record: refused.append(record) if "not committed" in record.getMessage() else None  # type: ignore[method-assign]
    logging.getLogger("queue_engine.kq.consumer").addHandler(counter)
    consumer = KafkaConsumer(
        [bootstrap],
        unique,
        unique,
        recorder,
        offset="first",
        policy=FAST_POLICY,  # backoff 0.05 s .. 0.2 s: a busy retry would write ~20 times in 3 s
        dead_letter_topic=bad_dlq,
        extra=FAST_GROUP,
    )
    try:
        async with running(consumer):
            await wait_for(lambda: len(refused) > 0, 30, "the first refused write")
            await asyncio.sleep(3)
            healthy, why = consumer.health()
            assert not healthy
            assert bad_dlq in why and "refuses" in why
            assert len(refused) <= 3  # 1 s, then 2 s: not a busy retry
            assert committed(bootstrap, unique, unique, 1)[0] < 1  # never committed without its dead letter
    finally:
        logging.getLogger("queue_engine.kq.consumer").removeHandler(counter)
    assert len(recorder.seen) == 1
