"""Deleting never hangs: finalizers only while a topic must be deleted, and a bounded clean-up."""

from __future__ import annotations

import time

from harness.kube_operator import Cluster, OperatorProcess, eventually, example
from harness.servers import Tansu

from .test_kafkaqueue import kafkaqueue, topics_on


def finalizers(cluster: Cluster, plural: str, name: str) -> list[str]:
    return list(cluster.get(plural, name)["metadata"].get("finalizers") or [])


def test_operator_down_deleting_resources_and_their_namespace_never_hangs(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique))  # deletionPolicy: Retain (the default)
    cluster.apply(example("delayqueue.yaml"))
    eventually(lambda: cluster.ready("kafkaqueues", "orders").get("status") == "True", what="kq Ready")
    eventually(lambda: cluster.ready("delayqueues", "reminders"), what="dq status written")
    time.sleep(2)  # a few observe timer rounds: kopf would have added its finalizer by now
    assert finalizers(cluster, "kafkaqueues", "orders") == []
    assert finalizers(cluster, "delayqueues", "reminders") == []

    operator.stop()
    cluster.delete("kafkaqueues", "orders")
    eventually(lambda: cluster.gone("kafkaqueues", "orders"), timeout=5, what="the KafkaQueue gone at once")
    assert f"{unique}.orders" in topics_on(kafka_broker), "Retain keeps the topic"
    cluster.kube.delete_namespace(cluster.namespace)
    eventually(
        lambda: cluster.gone("delayqueues", "reminders"),
        timeout=5,
        what="the DelayQueue gone with its namespace",
    )


def test_only_a_delete_kafkaqueue_has_a_finalizer_and_retain_takes_it_back(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique, deletionPolicy="Delete"))
    eventually(
        lambda: finalizers(cluster, "kafkaqueues", "orders"), what="a finalizer for the topic clean-up"
    )
    assert finalizers(cluster, "kafkaqueues", "orders") == ["queue-operator.dev/finalizer"]
    cluster.patch("kafkaqueues", "orders", {"spec": {"deletionPolicy": "Retain"}})
    eventually(lambda: not finalizers(cluster, "kafkaqueues", "orders"), what="the finalizer taken back")


def test_a_delete_kafkaqueue_whose_secret_is_gone_is_released_within_the_bound(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    operator.stop()
    operator.extra_args = ["--delete-timeout", "4", "--delete-retries", "1000"]
    operator.start()
    cluster.apply(kafkaqueue(kafka_broker, unique, deletionPolicy="Delete"))
    eventually(lambda: cluster.ready("kafkaqueues", "orders").get("status") == "True", what="topics created")
    assert finalizers(cluster, "kafkaqueues", "orders")
    # The credentials it needs to reach the brokers are gone (as when its namespace goes first).
    auth = {
        "sasl": {"mechanism": "SCRAM-SHA-512", "secretRef": {"name": "gone-secret"}},
        "allowPlaintext": True,
    }
    cluster.patch("kafkaqueues", "orders", {"spec": {"auth": auth}})
    eventually(
        lambda: cluster.ready("kafkaqueues", "orders").get("reason") == "SecretMissing",
        what="the Secret missed",
    )
    started = time.monotonic()
    cluster.delete("kafkaqueues", "orders")
    eventually(lambda: cluster.gone("kafkaqueues", "orders"), timeout=30, what="released after the bound")
    assert time.monotonic() - started < 25
    events = eventually(
        lambda: "gave up deleting topics" in (text := cluster.events_text()) and text, what="a Warning event"
    )
    assert f"{unique}.orders" in events and "delete them by hand" in events
    assert operator.running
