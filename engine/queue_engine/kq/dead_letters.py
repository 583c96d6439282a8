"""Reading, replaying and skipping dead letters (for ``queuectl dlq`` and the sidecar).

Reading commits nothing. The consumer group ``<dlq topic>.replay`` remembers how far the dead
letters were dealt with: every letter before its committed offset was replayed or skipped. A
letter replayed or skipped on its own (``replay_dead_letter``, ``skip_dead_letter``) gets a
*marker*: an empty record in the same partition of the dead-letter topic, after the letter, whose
headers name the letter's offset and what was done. Markers are never listed or replayed; the
committed offset moves past a letter once it and every letter before it are dealt with.

A replayed copy goes to the topic in the letter's ``x-original-topic`` header, with its key and
original headers, plus ``x-queue-message-id``: the id of the message as first delivered
(``<topic>/<partition>/<offset>``), which the sidecar sends as ``X-Message-Id``, so an app that
de-duplicates on it sees the replay as the same message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from queue_engine.errors import InvalidRequest, NotFound, QueueError, Unavailable
from queue_engine.kq.config import check_brokers, check_name, client_config, error_from_kafka
from queue_engine.kq.dead_letter_headers import (
    ATTEMPTS,
    DROPPED,
    ORIGINAL_OFFSET,
    ORIGINAL_PARTITION,
    ORIGINAL_TOPIC,
    original_headers,
)
from queue_engine.kq.message import KafkaMessage, from_record
from queue_engine.kq.producer_core import PRODUCER_DEFAULTS, PRODUCER_MANAGED
from queue_engine.kq.security import KafkaSecurity

log = logging.getLogger("queue_engine.kq.dead_letters")
READ_TIMEOUT = 10.0  # seconds without progress before giving up on reaching the end
SEND_TIMEOUT = 30.0

MESSAGE_ID = "x-queue-message-id"  # on a replayed copy: the id of the message as first delivered
HANDLED = "x-queue-dead-letter-handled"  # on a marker: replayed | skipped
HANDLED_OFFSET = "x-queue-dead-letter-offset"  # on a marker: the letter's offset (same partition)


@dataclass(frozen=True)
class DeadLetter:
    message: KafkaMessage
    state: str  # pending, replayed or skipped

    @property
    def attempts(self) -> int | None:
        value = self.message.header(ATTEMPTS)
        return int(value) if value is not None and value.isdigit() else None


@dataclass(frozen=True)
class DeadLetterPage:
    letters: list[DeadLetter]
    pending: int  # letters not yet replayed or skipped, in the whole topic
    matching: int  # letters the listing covers (the pending ones, or all), earlier pages included
    remaining: int  # of those, the ones on this page and the next ones
    next: dict[int, int] | None  # per partition, the offset the next page starts at; None: last page


@dataclass
class _Partition:
    low: int
    committed: int  # the replay group's position (low when it has none)
    high: int
    letters: list[KafkaMessage]  # read ones, by offset
    marks: dict[int, str]  # letter offset -> replayed | skipped

    def state(self, offset: int) -> str:
        if offset in self.marks:
            return self.marks[offset]
        # Behind the group's position without a marker: replayed in bulk (which marks what it skips).
        return "replayed" if offset < self.committed else "pending"

    def first_pending(self, done: Iterable[int] = ()) -> int:
        """Where the replay group may move: the first letter still pending, else the end."""
        skip = set(done)
        pending = (
            m.offset for m in self.letters if m.offset not in skip and self.state(m.offset) == "pending"
        )
        return next(pending, self.high)


@dataclass(frozen=True)
class _Target:
    """A dead-letter topic, its brokers, and the group that remembers the replays."""

    bootstrap: str
    topic: str
    group: str
    security: KafkaSecurity | None

    def consumer(self) -> Consumer:
        managed = {"group.id": self.group, "enable.auto.commit": False}
        return Consumer(client_config(self.bootstrap, self.security, {}, None, managed))

    def producer(self) -> Producer:
        try:
            config = client_config(self.bootstrap, self.security, PRODUCER_DEFAULTS, None, PRODUCER_MANAGED)
            return Producer(config)
        except KafkaException as exc:
            raise error_from_kafka(exc, "kafka producer config") from exc


def _target(
    brokers: Sequence[str], dlq_topic: str, security: KafkaSecurity | None, group: str | None
) -> _Target:
    bootstrap = check_brokers(brokers)
    check_name("dlq_topic", dlq_topic)
    return _Target(bootstrap, dlq_topic, group or f"{dlq_topic}.replay", security)


def _scan(
    consumer: Consumer, topic: str, *, from_low: bool, only: int | None = None, start: int | None = None
) -> dict[int, _Partition]:
    """Read each partition (or ``only``) from the group's position (or the start) to its end now."""
    described = consumer.list_topics(topic, timeout=READ_TIMEOUT).topics.get(topic)
    if described is None or described.error is not None or not described.partitions:
        raise NotFound(f"dead-letter topic {topic!r} does not exist")
    numbers = sorted(described.partitions)
    if only is not None and only not in numbers:
        raise NotFound(f"dead-letter topic {topic!r} has no partition {only} (partitions: 0-{numbers[-1]})")
    tps = [TopicPartition(topic, p) for p in numbers if only is None or p == only]
    committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=READ_TIMEOUT)}
    partitions: dict[int, _Partition] = {}
    for tp in tps:
        low, high = consumer.get_watermark_offsets(tp, timeout=READ_TIMEOUT, cached=False)
        position = committed.get(tp.partition, -1)
        position = max(position, low) if position >= 0 else low
        partitions[tp.partition] = _Partition(low, min(position, high), high, [], {})
    ranges = {
        p: (
            max(start, part.low) if start is not None else part.low if from_low else part.committed,
            part.high,
        )
        for p, part in partitions.items()
    }
    for record in _read(consumer, topic, {p: r for p, r in ranges.items() if r[0] < r[1]}):
        part = partitions[record.partition]
        handled, of = record.header(HANDLED), record.header(HANDLED_OFFSET)
        if handled is not None:
            if of is not None and of.isdigit():
                part.marks[int(of)] = handled.decode(errors="replace")
        else:
            part.letters.append(record)
    return partitions


def _read(consumer: Consumer, topic: str, ranges: dict[int, tuple[int, int]]) -> list[KafkaMessage]:
    """Every record of each partition from start to end (exclusive)."""
    if not ranges:
        return []
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in ranges.items()])
    remaining = {p: end for p, (_, end) in ranges.items()}
    messages: list[KafkaMessage] = []
    deadline = time.monotonic() + READ_TIMEOUT
    while remaining:
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
            end = remaining.get(letter.partition)
            if end is None or letter.offset >= end:
                continue
            attempts = letter.header(ATTEMPTS) or b"1"
            messages.append(dataclasses.replace(letter, attempt=int(attempts) if attempts.isdigit() else 1))
            if letter.offset + 1 >= end:
                del remaining[letter.partition]
    consumer.unassign()
    return messages


def _oldest_first(partitions: Mapping[int, _Partition]) -> list[DeadLetter]:
    """Oldest first across partitions, never out of offset order within one."""
    streams = [
        [DeadLetter(m, part.state(m.offset)) for m in part.letters] for _, part in sorted(partitions.items())
    ]
    return list(heapq.merge(*streams, key=lambda d: (d.message.timestamp_ms, d.message.partition)))


def _page(
    target: _Target, limit: int, after: Mapping[int, int] | None, include_handled: bool
) -> DeadLetterPage:
    consumer = target.consumer()
    try:
        partitions = _scan(consumer, target.topic, from_low=include_handled)
    except KafkaException as exc:
        raise error_from_kafka(exc, f"reading {target.topic}") from exc
    finally:
        consumer.close()
    letters = _oldest_first(partitions)
    pending = sum(d.state == "pending" for d in letters)
    wanted = [d for d in letters if include_handled or d.state == "pending"]
    after = after or {}
    rest = [d for d in wanted if d.message.offset >= after.get(d.message.partition, 0)]
    shown = rest[:limit]
    next_page: dict[int, int] | None = None
    if len(rest) > limit:
        next_page = dict(after)
        for d in shown:
            next_page[d.message.partition] = d.message.offset + 1
    return DeadLetterPage(shown, pending, len(wanted), len(rest), next_page)


async def list_dead_letters(
    brokers: Sequence[str],
    dlq_topic: str,
    *,
    limit: int = 100,
    after: Mapping[int, int] | None = None,
    include_handled: bool = False,
    security: KafkaSecurity | None = None,
    group: str | None = None,
) -> DeadLetterPage:
    """A page of dead letters, oldest first: those still pending, or all with ``include_handled``."""
    target = _target(brokers, dlq_topic, security, group)
    return await asyncio.to_thread(_page, target, limit, after, include_handled)


async def read_dead_letters(
    brokers: Sequence[str], dlq_topic: str, limit: int = 100, security: KafkaSecurity | None = None
) -> list[KafkaMessage]:
    """Up to ``limit`` dead letters from the start of ``dlq_topic``, oldest first; commits nothing."""
    page = await list_dead_letters(brokers, dlq_topic, limit=limit, include_handled=True, security=security)
    return [d.message for d in page.letters]


def _one(consumer: Consumer, topic: str, partition: int, offset: int) -> tuple[DeadLetter, _Partition]:
    parts = _scan(consumer, topic, from_low=False, only=partition, start=offset)
    part = parts[partition]
    if not part.low <= offset < part.high:
        span = f"offsets {part.low}-{part.high - 1}" if part.high > part.low else "no records"
        raise NotFound(
            f"no dead letter at {partition}:{offset} in {topic} (partition {partition} has {span})"
        )
    letter = next((m for m in part.letters if m.offset == offset), None)
    if letter is None:
        raise NotFound(f"{partition}:{offset} in {topic} is a replay marker, not a dead letter")
    return DeadLetter(letter, part.state(offset)), part


def _get(target: _Target, partition: int, offset: int) -> DeadLetter:
    consumer = target.consumer()
    try:
        return _one(consumer, target.topic, partition, offset)[0]
    except KafkaException as exc:
        raise error_from_kafka(exc, f"reading {target.topic}") from exc
    finally:
        consumer.close()


async def get_dead_letter(
    brokers: Sequence[str],
    dlq_topic: str,
    partition: int,
    offset: int,
    *,
    security: KafkaSecurity | None = None,
    group: str | None = None,
) -> DeadLetter:
    """The dead letter at ``partition:offset`` and whether it was replayed or skipped."""
    return await asyncio.to_thread(_get, _target(brokers, dlq_topic, security, group), partition, offset)


def _handle_one(target: _Target, partition: int, offset: int, action: str) -> DeadLetter:
    topic = target.topic
    consumer = target.consumer()
    producer = target.producer()
    try:
        letter, part = _one(consumer, topic, partition, offset)
        if letter.state != "pending":
            raise NotFound(
                f"no pending dead letter at {partition}:{offset} in {topic}: already {letter.state}"
            )
        if action == "replayed":
            copy = _replayed_copy(letter.message)
            if copy is None:
                raise InvalidRequest(
                    f"dead letter {partition}:{offset} has no {ORIGINAL_TOPIC} header or was written "
                    f"without its body ({DROPPED}), so it cannot be replayed; skip it instead"
                )
            _send(producer, [copy], f"replay of {topic} {partition}:{offset}")
        _send(producer, [_marker(topic, partition, offset, action)], f"marking {topic} {partition}:{offset}")
        moved = part.first_pending(done=[offset])
        if moved > part.committed:
            consumer.commit(offsets=[TopicPartition(topic, partition, moved)], asynchronous=False)
        return DeadLetter(letter.message, action)
    except KafkaException as exc:
        raise error_from_kafka(exc, f"{action} of {topic} {partition}:{offset}") from exc
    finally:
        producer.flush(5)
        consumer.close()


async def replay_dead_letter(
    brokers: Sequence[str],
    dlq_topic: str,
    partition: int,
    offset: int,
    *,
    security: KafkaSecurity | None = None,
    group: str | None = None,
) -> DeadLetter:
    """Send one pending dead letter back to its original topic and mark it replayed."""
    target = _target(brokers, dlq_topic, security, group)
    return await asyncio.to_thread(_handle_one, target, partition, offset, "replayed")


async def skip_dead_letter(
    brokers: Sequence[str],
    dlq_topic: str,
    partition: int,
    offset: int,
    *,
    security: KafkaSecurity | None = None,
    group: str | None = None,
) -> DeadLetter:
    """Mark one pending dead letter skipped: it is no longer listed or replayed (nor deleted)."""
    target = _target(brokers, dlq_topic, security, group)
    return await asyncio.to_thread(_handle_one, target, partition, offset, "skipped")


_Record = tuple[str, int | None, bytes, bytes | None, list[tuple[str, bytes]]]


def _marker(topic: str, partition: int, offset: int, action: str) -> _Record:
    """The record saying that the letter at ``offset`` was replayed or skipped (after it, same partition)."""
    return (topic, partition, b"", None, [(HANDLED, action.encode()), (HANDLED_OFFSET, str(offset).encode())])


def _replayed_copy(letter: KafkaMessage) -> _Record | None:
    """The record a replay sends: to the original topic, with the message's first id."""
    target = letter.header(ORIGINAL_TOPIC)
    if target is None or letter.header(DROPPED) is not None:
        return None  # nowhere to send it, or written without its body: replaying it would be wrong
    headers = [(k, v) for k, v in original_headers(letter.headers) if k != MESSAGE_ID]
    first_id = letter.header(MESSAGE_ID)  # replayed before: keep the first id
    if first_id is None:
        partition, offset = letter.header(ORIGINAL_PARTITION), letter.header(ORIGINAL_OFFSET)
        if partition is not None and offset is not None:
            first_id = b"%b/%b/%b" % (target, partition, offset)
    if first_id is not None:
        headers.append((MESSAGE_ID, first_id))
    return (target.decode(), None, letter.value, letter.key, headers)


def _send(
    producer: Producer, records: Sequence[_Record], what: str, *, raise_one: bool = True
) -> list[QueueError | None]:
    """Produce and wait for every acknowledgement; one result per record (None: acknowledged).

    With ``raise_one``, a single record's failure is raised instead.
    """
    results: list[QueueError | None] = [Unavailable(f"{what}: no acknowledgement")] * len(records)

    def report(index: int) -> Any:
        def on_delivery(err: KafkaError | None, _msg: Any) -> None:
            results[index] = None if err is None else error_from_kafka(err, what)

        return on_delivery

    for index, (topic, partition, value, key, headers) in enumerate(records):
        sent: list[tuple[str, str | bytes | None]] = list(headers)
        if partition is None:
            producer.produce(topic, value=value, key=key, headers=sent, on_delivery=report(index))
        else:
            producer.produce(
                topic, value=value, key=key, headers=sent, partition=partition, on_delivery=report(index)
            )
    producer.flush(SEND_TIMEOUT)
    if raise_one and len(records) == 1 and results[0] is not None:
        raise results[0]
    return results


def _replay(target: _Target, limit: int | None) -> int:
    topic = target.topic
    consumer = target.consumer()
    producer: Producer | None = None
    try:
        partitions = _scan(consumer, topic, from_low=False)
        pending = [d.message for d in _oldest_first(partitions) if d.state == "pending"]
        chosen = pending if limit is None else pending[:limit]
        records: list[_Record] = []
        for letter in chosen:
            copy = _replayed_copy(letter)
            if copy is None:
                log.warning(
                    "%s %d:%d has no %s header or was written without its body; marked skipped",
                    topic,
                    letter.partition,
                    letter.offset,
                    ORIGINAL_TOPIC,
                )
                copy = _marker(topic, letter.partition, letter.offset, "skipped")
            records.append(copy)
        results: list[QueueError | None] = []
        if records:
            producer = target.producer()
            results = _send(producer, records, f"replay of {topic}", raise_one=False)
        done: dict[int, list[int]] = {}
        replayed = failed = 0
        first_error: QueueError | None = None
        for letter, record, error in zip(chosen, records, results, strict=True):
            if error is not None:
                failed += 1
                first_error = first_error or error
                continue
            done.setdefault(letter.partition, []).append(letter.offset)
            replayed += record[0] != topic  # a marker goes to the dead-letter topic itself
        # Each partition's position moves to its first letter still pending (a failed or unchosen one).
        commit = [
            TopicPartition(topic, p, moved)
            for p, part in partitions.items()
            if (moved := part.first_pending(done.get(p, []))) > part.committed
        ]
        if commit:
            consumer.commit(offsets=commit, asynchronous=False)
        if first_error is not None:
            raise Unavailable(f"replay of {topic}: {replayed} replayed, {failed} failed: {first_error}")
        return replayed
    except KafkaException as exc:
        raise error_from_kafka(exc, f"replay of {topic}") from exc
    finally:
        if producer is not None:
            producer.flush(5)
        consumer.close()


async def replay_dead_letters(
    brokers: Sequence[str],
    dlq_topic: str,
    limit: int | None = None,
    security: KafkaSecurity | None = None,
    *,
    group: str | None = None,
) -> int:
    """Send the pending dead letters (oldest first, at most ``limit``) back; return how many."""
    return await asyncio.to_thread(_replay, _target(brokers, dlq_topic, security, group), limit)
