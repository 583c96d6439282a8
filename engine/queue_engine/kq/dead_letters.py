"""Reading and replaying a dead-letter topic (for ``queuectl dlq`` and the sidecar).

``read_dead_letters`` only looks: it reads from the start of the topic and commits nothing.
``replay_dead_letters`` sends each dead letter back to the topic named in its
``x-original-topic`` header (with its key and original headers) and remembers how far it got
in the consumer group ``<dlq topic>.replay``, so a dead letter is replayed once even if
``replay`` runs again. A letter written without its body (``x-dead-letter-dropped``, see
``dead_letter_headers``) is skipped with a warning: replaying an empty body would be wrong.
Its offsets are committed only after the replayed copies were acked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
import uuid
from collections.abc import Sequence

from confluent_kafka import Consumer, KafkaException, TopicPartition

from queue_engine.errors import NotFound, QueueError, Unavailable
from queue_engine.kq.config import check_brokers, check_name, client_config, error_from_kafka
from queue_engine.kq.dead_letter_headers import ATTEMPTS, DROPPED, ORIGINAL_TOPIC, original_headers
from queue_engine.kq.message import Delivered, KafkaMessage, from_record
from queue_engine.kq.producer_core import Batch, ProducerCore
from queue_engine.kq.security import KafkaSecurity

log = logging.getLogger("queue_engine.kq.dead_letters")
READ_TIMEOUT = 10.0  # seconds without progress before giving up on reaching the end


def _consumer(bootstrap: str, security: KafkaSecurity | None, group: str) -> Consumer:
    config = client_config(bootstrap, security, {}, None, {"group.id": group, "enable.auto.commit": False})
    return Consumer(config)


def _start_positions(
    consumer: Consumer, topic: str, from_committed: bool, timeout: float
) -> dict[int, tuple[int, int]]:
    """partition -> (start offset, end offset) where end is the high watermark right now."""
    described = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise NotFound(f"dead-letter topic {topic!r} does not exist")
    tps = [TopicPartition(topic, p) for p in sorted(described.partitions)]
    committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=timeout)}
    ranges: dict[int, tuple[int, int]] = {}
    for tp in tps:
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout, cached=False)
        start = committed.get(tp.partition, -1) if from_committed else -1
        start = max(start, low) if start >= 0 else low
        if start < high:
            ranges[tp.partition] = (start, high)
    return ranges


def _read(
    consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]], limit: int | None
) -> list[KafkaMessage]:
    """Read each partition from start to end (exclusive), at most ``limit`` in all."""
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
    remaining = {p: end for p, (_, end) in ranges.items()}
    messages: list[KafkaMessage] = []
    deadline = time.monotonic() + READ_TIMEOUT
    while remaining and (limit is None or len(messages) < limit):
        batch = consumer.consume(500, 0.1)
        if not batch:
            if time.monotonic() > deadline:
                raise Unavailable(f"reading {topic}: no progress within {READ_TIMEOUT}s")
            continue
        deadline = time.monotonic() + READ_TIMEOUT
        for record in batch:
            if record.error() is not None:
                continue
            letter = from_record(record, topic)
            partition, offset = letter.partition, letter.offset
            end = remaining.get(partition)
            if end is None or offset >= end:
                continue
            attempts = letter.header(ATTEMPTS) or b"1"
            messages.append(dataclasses.replace(letter, attempt=int(attempts) if attempts.isdigit() else 1))
            if offset + 1 >= end:
                del remaining[partition]
            if limit is not None and len(messages) >= limit:
                break
    return messages


def _read_dead_letters(
    bootstrap: str, topic: str, limit: int, security: KafkaSecurity | None
) -> list[KafkaMessage]:
    consumer = _consumer(bootstrap, security, f"queue-operator-peek-{uuid.uuid4().hex[:8]}")
    try:
        ranges = _start_positions(consumer, topic, from_committed=False, timeout=READ_TIMEOUT)
        return sorted(
            _read(consumer, topic, ranges, limit), key=lambda m: (m.timestamp_ms, m.partition, m.offset)
        )
    except KafkaException as exc:
        raise error_from_kafka(exc, f"reading {topic}") from exc
    finally:
        consumer.close()


async def read_dead_letters(
    brokers: Sequence[str], dlq_topic: str, limit: int = 100, security: KafkaSecurity | None = None
) -> list[KafkaMessage]:
    """Up to ``limit`` dead letters from the start of ``dlq_topic``, oldest first; commits nothing."""
    bootstrap = check_brokers(brokers)
    check_name("dlq_topic", dlq_topic)
    return await asyncio.to_thread(_read_dead_letters, bootstrap, dlq_topic, limit, security)


def _replay(bootstrap: str, topic: str, limit: int | None, security: KafkaSecurity | None, group: str) -> int:
    consumer = _consumer(bootstrap, security, group)
    producer: ProducerCore | None = None
    try:
        ranges = _start_positions(consumer, topic, from_committed=True, timeout=READ_TIMEOUT)
        letters = _read(consumer, topic, ranges, limit)
        if not letters:
            return 0
        producer = ProducerCore(bootstrap, topic, _resolve, security=security, name=f"{topic}-replay")
        sent: list[tuple[KafkaMessage, concurrent.futures.Future[Delivered]]] = []
        for letter in letters:
            future: concurrent.futures.Future[Delivered] = concurrent.futures.Future()
            target = letter.header(ORIGINAL_TOPIC)
            dropped = letter.header(DROPPED)
            if target is None or dropped is not None:
                why = f"has no {ORIGINAL_TOPIC} header"
                if dropped is not None:
                    why = f"was written without its {dropped.decode(errors='replace')}"
                log.warning("%s/%d@%d %s; skipped", topic, letter.partition, letter.offset, why)
                future.set_result(Delivered(topic, letter.partition, letter.offset))
            else:
                refused = producer.produce(
                    future, letter.value, letter.key, original_headers(letter.headers), topic=target.decode()
                )
                if refused is not None:
                    future.set_exception(refused)
            sent.append((letter, future))
        producer.flush(30)
        # Commit per partition up to the first letter that was not acknowledged.
        commit: dict[int, int] = {}
        failed: dict[int, QueueError] = {}
        replayed = 0
        for letter, future in sent:
            if letter.partition in failed:
                continue
            try:
                future.result(timeout=0)
            except (QueueError, concurrent.futures.TimeoutError) as exc:
                failed[letter.partition] = exc if isinstance(exc, QueueError) else Unavailable("no ack")
                continue
            commit[letter.partition] = letter.offset + 1
            replayed += letter.header(ORIGINAL_TOPIC) is not None and letter.header(DROPPED) is None
        if commit:
            consumer.commit(
                offsets=[TopicPartition(topic, p, o) for p, o in commit.items()], asynchronous=False
            )
        if failed:
            raise Unavailable(
                f"replay of {topic}: {replayed} replayed, then failed: {next(iter(failed.values()))}"
            )
        return replayed
    except KafkaException as exc:
        raise error_from_kafka(exc, f"replay of {topic}") from exc
    finally:
        if producer is not None:
            producer.close(5)
        consumer.close()


def _resolve(batch: Batch) -> None:
    for future, result in batch:
        if isinstance(result, Delivered):
            future.set_result(result)
        else:
            future.set_exception(result)


async def replay_dead_letters(
    brokers: Sequence[str],
    dlq_topic: str,
    limit: int | None = None,
    security: KafkaSecurity | None = None,
    *,
    group: str | None = None,
) -> int:
    """Send not-yet-replayed dead letters back to their original topics; return how many."""
    bootstrap = check_brokers(brokers)
    check_name("dlq_topic", dlq_topic)
    return await asyncio.to_thread(
        _replay, bootstrap, dlq_topic, limit, security, group or f"{dlq_topic}.replay"
    )
