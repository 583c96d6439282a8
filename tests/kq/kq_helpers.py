"""Helpers for the kq tests: topics made with AdminClient first, raw clients to check the broker."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from queue_engine.kq import KafkaConsumer, KafkaMessage
from queue_engine.kq.config import FAST_GROUP
from queue_engine.policy import Backoff, DeliveryPolicy

__all__ = ["FAST_GROUP"]  # tests opt into a fast group join with extra=FAST_GROUP

FAST_POLICY = DeliveryPolicy(max_attempts=3, backoff=Backoff(initial=0.05, max=0.2, multiplier=2), timeout=5)


def create_topics(bootstrap: str, *topics: tuple[str, int]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics(
        [NewTopic(name, partitions, 1) for name, partitions in topics]
    ).values():
        future.result(15)


def produce_raw(
    bootstrap: str, topic: str, items: Sequence[tuple[bytes | None, bytes]], partition: int | None = None
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors: list[Any] = []
    for key, value in items:
        kwargs: dict[str, Any] = {
            "key": key,
            "value": value,
            "on_delivery": lambda e, _m: e and errors.append(e),
        }
        if partition is not None:
            kwargs["partition"] = partition
        producer.produce(topic, **kwargs)
    assert producer.flush(30) == 0
    assert errors == []


def committed(bootstrap: str, topic: str, group: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def read_raw(bootstrap: str, topic: str, partitions: int, count: int, timeout: float = 20) -> list[Any]:
    """Read ``count`` records of ``topic`` from the start, without a group."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "raw-reader", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    records: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < count and time.monotonic() < deadline:
            records += [r for r in consumer.consume(500, 0.5) if r.error() is None]
    finally:
        consumer.close()
    return records


async def wait_for(predicate: Callable[[], bool], seconds: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(consumer: KafkaConsumer, assigned: bool = True) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``consumer`` in a task; wait until it owns partitions; stop it afterwards."""
    task = asyncio.create_task(consumer.run())
    try:
        if assigned:
            await wait_for(
                lambda: bool(consumer.assigned_partitions) or task.done(), 40, "partition assignment"
            )
            if task.done():
                task.result()
        yield task
    finally:
        await consumer.stop(grace=5)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)


class Recorder:
    """A handler that records what it saw; ``answer`` decides the outcome per message."""

    def __init__(self, answer: Callable[[KafkaMessage], Any] | None = None) -> None:
        self.seen: list[KafkaMessage] = []
        self.answer = answer

    async def __call__(self, message: KafkaMessage) -> Any:
        from queue_engine.policy import Outcome  # noqa: PLC0415

        self.seen.append(message)
        if self.answer is None:
            return Outcome.success()
        result = self.answer(message)
        if asyncio.iscoroutine(result):
            result = await result
        return result
