"""Reading back what was published, with plain clients (not the engines under test)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast

from confluent_kafka import Consumer, TopicPartition


@dataclass(frozen=True)
class Record:
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]]


def read_at(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 15.0) -> Record:
    """The record at exactly ``topic/partition/offset``, read by a plain confluent consumer."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "publish-tests", "enable.auto.commit": False}
    )
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        message = consumer.poll(timeout)
        assert message is not None, f"nothing at {topic}/{partition}/{offset} after {timeout}s"
        assert message.error() is None, message.error()
        assert (message.partition(), message.offset()) == (partition, offset)
        # A consumer reads headers as a list of (name, bytes or None); None stays b"" here.
        raw = cast(list[tuple[str, bytes | None]], message.headers() or [])
        headers = [(k, v or b"") for k, v in raw]
        return Record(message.value() or b"", message.key(), headers)
    finally:
        consumer.close()


async def read_at_async(bootstrap: str, topic: str, partition: int, offset: int) -> Record:
    return await asyncio.to_thread(read_at, bootstrap, topic, partition, offset)
