"""KafkaQueues of several teams on one cluster: topic ownership, and a group that skips nothing.

The real ``queue-operator`` on the API emulator, with tansu as the broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from harness.kube import KubeApi
from harness.kube_operator import Cluster, OperatorProcess, eventually
from harness.servers import Tansu

from .test_kafkaqueue import kafkaqueue, topics_on

PLURAL = "kafkaqueues"


@pytest.fixture
def other_team(kube: KubeApi, cluster: Cluster, operator: OperatorProcess) -> Iterator[Cluster]:
    """A second namespace, watched by the same operator (restarted to watch both)."""
    namespace = f"{cluster.namespace}-b"
    kube.create_namespace(namespace)
    operator.stop()
    operator.extra_args = ["--namespace", namespace]
    operator.start()
    yield Cluster(kube, namespace, cluster.api)
    kube.delete_namespace(namespace)


def test_a_second_queue_naming_an_owned_topic_is_a_conflict_and_never_touches_it(
    cluster: Cluster, other_team: Cluster, operator: OperatorProcess, own_kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(own_kafka_broker, unique, deletionPolicy="Delete"))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="the first Ready")
    topic = f"{unique}.orders"
    # Another team, another namespace, the same topic name on the same brokers.
    time.sleep(1.1)  # creation timestamps have whole seconds: make the order unambiguous
    other_team.apply(kafkaqueue(own_kafka_broker, unique, deletionPolicy="Delete"))
    conflict = eventually(
        lambda: (c := other_team.ready(PLURAL, "orders")).get("reason") == "ResourceConflict" and c,
        what="the second refused",
    )
    assert conflict["status"] == "False"
    assert f"KafkaQueue {cluster.namespace}/orders" in conflict["message"]
    assert "spec.topic.name" in conflict["message"]
    degraded = other_team.condition(PLURAL, "orders", "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ResourceConflict")
    assert "createdTopics" not in (other_team.get(PLURAL, "orders").get("status") or {})

    # Deleting the second, with Delete, leaves the first team's topics alone.
    other_team.delete(PLURAL, "orders")
    eventually(lambda: other_team.gone(PLURAL, "orders"), what="the second gone")
    assert {topic, f"{topic}.dlq"} <= set(topics_on(own_kafka_broker))
    assert cluster.ready(PLURAL, "orders")["status"] == "True"

    # The owner's Delete still deletes what it created.
    cluster.delete(PLURAL, "orders")
    eventually(lambda: cluster.gone(PLURAL, "orders"), what="the owner gone")
    eventually(lambda: topic not in topics_on(own_kafka_broker), what="the owner's topics deleted")


def test_a_topic_that_existed_before_is_adopted_and_never_deleted(
    cluster: Cluster, operator: OperatorProcess, own_kafka_broker: Tansu, unique: str
) -> None:
    topic = f"{unique}.orders"
    admin = AdminClient({"bootstrap.servers": own_kafka_broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(10)
    cluster.apply(kafkaqueue(own_kafka_broker, unique, deletionPolicy="Delete"))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready on the old topic")
    status = cluster.get(PLURAL, "orders")["status"]
    assert status["createdTopics"] == [f"{topic}.dlq", f"{topic}.attempts"], "not the adopted topic"
    cluster.delete(PLURAL, "orders")
    eventually(lambda: cluster.gone(PLURAL, "orders"), what="the KafkaQueue gone")
    remaining = topics_on(own_kafka_broker)
    assert topic in remaining, "the adopted topic stays"
    assert f"{topic}.dlq" not in remaining, "the topics it created go"
    assert f"{topic}.attempts" not in remaining


def test_messages_published_after_ready_reach_a_group_that_starts_later_at_the_latest_offset(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique, offset="last"))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready")
    queue = cluster.get(PLURAL, "orders")
    topic, group = queue["status"]["topic"], f"{cluster.namespace}.orders"
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "acks": "all"})
    sent = [f"m{i}".encode() for i in range(10)]
    for i, body in enumerate(sent):
        producer.produce(topic, body, key=str(i).encode())
    assert producer.flush(10) == 0
    # Only now does the first consumer of the group start, at "the latest offset".
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "latest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500,
        }
    )
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                got.append(message.value())
    finally:
        consumer.close()
    assert sorted(got) == sorted(sent)
