"""The harness's tansu broker is a real Kafka-protocol broker, and a durable one survives restarts."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness.servers import Tansu

FAST_GROUP = {"session.timeout.ms": 6000, "heartbeat.interval.ms": 500}


def _create_topic(broker: Tansu, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(10)


def _produce(broker: Tansu, topic: str, count: int) -> list[tuple[int, int]]:
    acked: list[tuple[int, int]] = []
    errors: list[KafkaError] = []

    def report(err: KafkaError | None, msg: object) -> None:
        if err is not None:
            errors.append(err)
        else:
            acked.append((msg.partition(), msg.offset()))  # type: ignore[attr-defined]

    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    for i in range(count):
        producer.produce(topic, value=f"m{i}".encode(), key=f"k{i % 7}".encode(), on_delivery=report)
    assert producer.flush(15) == 0
    assert errors == []
    return acked


def _consumer(broker: Tansu, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_GROUP,
        }
    )


def test_produce_100_and_consume_with_commits_and_a_second_member(kafka_broker: Tansu, unique: str) -> None:
    _create_topic(kafka_broker, unique, 4)
    acked = _produce(kafka_broker, unique, 100)
    assert len(acked) == 100 and {p for p, _ in acked} <= {0, 1, 2, 3}

    first = _consumer(kafka_broker, unique)
    first.subscribe([unique])
    seen: list[bytes] = []
    deadline = time.monotonic() + 60
    while len(seen) < 100 and time.monotonic() < deadline:
        msg = first.poll(0.5)
        if msg is None or msg.error():
            continue
        seen.append(msg.value())
        first.commit(msg, asynchronous=False)
    assert sorted(seen) == sorted(f"m{i}".encode() for i in range(100))
    committed = first.committed([TopicPartition(unique, p) for p in range(4)], timeout=10)
    assert sum(tp.offset for tp in committed) == 100

    # A second member joins: the group rebalances and partitions are split between the two.
    second = _consumer(kafka_broker, unique)
    second.subscribe([unique])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (first.assignment() and second.assignment()):
        first.poll(0.2)
        second.poll(0.2)
    mine = {tp.partition for tp in first.assignment()}
    theirs = {tp.partition for tp in second.assignment()}
    assert mine and theirs and not (mine & theirs) and mine | theirs == {0, 1, 2, 3}
    first.close()
    second.close()


def test_durable_broker_keeps_messages_across_a_kill(durable_kafka_broker: Tansu, unique: str) -> None:
    _create_topic(durable_kafka_broker, unique, 1)
    _produce(durable_kafka_broker, unique, 5)
    durable_kafka_broker.kill()
    durable_kafka_broker.start()
    consumer = _consumer(durable_kafka_broker, unique)
    consumer.assign([TopicPartition(unique, 0, 0)])
    seen: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(seen) < 5 and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            seen.append(msg.value())
    consumer.close()
    assert seen == [f"m{i}".encode() for i in range(5)]
