"""KafkaQueue end to end: the operator process manages topics on the real (tansu) broker."""

from __future__ import annotations

import copy
import json
from typing import Any

from confluent_kafka.admin import AdminClient

from harness.kube_operator import Cluster, OperatorProcess, eventually, example
from harness.servers import Tansu

PLURAL = "kafkaqueues"


def topics_on(broker: Tansu) -> dict[str, int]:
    """Every topic with its partitions (a metadata request for all topics creates none)."""
    metadata = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items() if topic.error is None}


def kafkaqueue(
    broker: Tansu, unique: str, file: str = "kafkaqueue.yaml", **spec: Any
) -> list[dict[str, Any]]:
    """An example pointed at the test broker, with topic names no other test uses."""
    docs = copy.deepcopy(example(file))
    queue = docs[-1]
    queue["spec"]["brokers"] = [broker.bootstrap]
    topic = queue["spec"].setdefault("topic", {})
    topic["name"] = f"{unique}.{topic.get('name', queue['metadata']['name'])}"
    if "deadLetterTopic" in queue["spec"]:
        queue["spec"]["deadLetterTopic"] = f"{unique}.{queue['spec']['deadLetterTopic']}"
    queue["spec"].update(spec)
    return docs


def test_example_creates_topic_and_dead_letter_topic(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready=True")
    topic = f"{unique}.orders"
    assert topics_on(kafka_broker)[topic] == 3
    assert f"{topic}.dlq" in topics_on(kafka_broker)
    # The consumers' attempts journal, made by the operator so they need no right to create topics.
    assert topics_on(kafka_broker)[f"{topic}.attempts"] == 3
    status = cluster.get(PLURAL, "orders")["status"]
    assert (status["topic"], status["partitions"], status["deadLetterTopic"]) == (topic, 3, f"{topic}.dlq")
    assert status["observedGeneration"] == 1
    assert cluster.ready(PLURAL, "orders")["reason"] == "TopicReady"
    assert "Traceback" not in operator.log()


def test_partition_changes_are_reported_not_applied(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready=True")
    topic = f"{unique}.orders"

    cluster.patch(PLURAL, "orders", {"spec": {"topic": {"partitions": 2}}})
    refused = eventually(
        lambda: (
            (c := cluster.condition(PLURAL, "orders", "Degraded"))["reason"] == "PartitionDecreaseRefused"
            and c
        ),
        what="the decrease refused",
    )
    # The topic still serves as it is; the refused part of the spec is Degraded, not applied.
    assert refused["status"] == "True" and refused["observedGeneration"] == 2
    assert cluster.ready(PLURAL, "orders")["status"] == "True"
    assert cluster.get(PLURAL, "orders")["status"]["observedGeneration"] == 1
    assert (
        "cannot remove partitions" in refused["message"]
        and "set partitions to 3 or more" in refused["message"]
    )
    assert topics_on(kafka_broker)[topic] == 3

    # tansu cannot add partitions (CreatePartitions is unsupported): the brokers' answer is shown.
    cluster.patch(PLURAL, "orders", {"spec": {"topic": {"partitions": 4}}})
    raised = eventually(
        lambda: (
            (c := cluster.condition(PLURAL, "orders", "Degraded"))["reason"] == "PartitionsNotRaised" and c
        ),
        what="the raise reported",
    )
    assert "CreatePartitions" in raised["message"]
    assert cluster.get(PLURAL, "orders")["status"]["partitions"] == 3
    assert operator.running


def test_delete_policy_delete_removes_both_topics(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique, deletionPolicy="Delete"))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready=True")
    cluster.delete(PLURAL, "orders")
    eventually(lambda: cluster.gone(PLURAL, "orders"), what="the KafkaQueue gone")
    remaining = topics_on(kafka_broker)
    assert f"{unique}.orders" not in remaining
    assert f"{unique}.orders.dlq" not in remaining
    assert f"{unique}.orders.attempts" not in remaining


def test_delete_policy_retain_keeps_the_topics(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready=True")
    cluster.delete(PLURAL, "orders")
    eventually(lambda: cluster.gone(PLURAL, "orders"), what="the KafkaQueue gone")
    remaining = topics_on(kafka_broker)
    assert f"{unique}.orders" in remaining
    assert f"{unique}.orders.dlq" in remaining
    assert f"{unique}.orders.attempts" in remaining


def test_unreachable_broker_is_reported_and_retried(
    cluster: Cluster, operator: OperatorProcess, own_kafka_broker: Tansu, unique: str
) -> None:
    own_kafka_broker.stop()
    cluster.apply(kafkaqueue(own_kafka_broker, unique))
    down = eventually(
        lambda: (c := cluster.ready(PLURAL, "orders")).get("reason") == "BrokerUnavailable" and c,
        what="the outage reported",
    )
    assert down["status"] == "False"
    assert own_kafka_broker.bootstrap in down["message"] and "retrying" in down["message"]
    own_kafka_broker.start()
    eventually(
        lambda: cluster.ready(PLURAL, "orders").get("status") == "True", timeout=40, what="Ready once up"
    )
    assert topics_on(own_kafka_broker)[f"{unique}.orders"] == 3
    assert operator.running


def test_invalid_spec_is_reported_in_the_ready_condition(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    docs = kafkaqueue(kafka_broker, unique)
    docs[-1]["spec"]["deadLetterTopic"] = docs[-1]["spec"]["topic"]["name"]
    cluster.apply(docs)
    ready = eventually(lambda: cluster.ready(PLURAL, "orders"), what="a Ready condition")
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert "spec.deadLetterTopic" in ready["message"] and "is the topic itself" in ready["message"]
    assert f"{unique}.orders" not in topics_on(kafka_broker)
    cluster.patch(PLURAL, "orders", {"spec": {"deadLetterTopic": f"{unique}.orders.dead"}})
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready once fixed")
    assert f"{unique}.orders.dead" in topics_on(kafka_broker)


def test_sasl_example_never_exposes_the_secret(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    docs = kafkaqueue(kafka_broker, unique, "kafkaqueue-sasl.yaml")
    password = f"pw-{unique}"
    docs[0]["stringData"]["password"] = password
    cluster.apply(docs[2:])  # the KafkaQueue alone first: its Secrets are missing
    missing = eventually(
        lambda: (c := cluster.ready(PLURAL, "payments")).get("reason") == "SecretMissing" and c,
        what="the missing Secret reported",
    )
    assert "payments-kafka-user" in missing["message"]
    cluster.apply(docs[:2])
    # The example's CA bundle is a placeholder, not PEM: librdkafka refuses it.
    invalid = eventually(
        lambda: (c := cluster.ready(PLURAL, "payments")).get("reason") == "InvalidClientConfig" and c,
        what="the bad CA reported",
    )
    assert "kafka-cluster-ca" in invalid["message"]
    # Without TLS, the credentials would cross the network in clear: refused, never sent.
    cluster.patch(PLURAL, "payments", {"spec": {"auth": {"tls": None}}})
    refused = eventually(
        lambda: (c := cluster.ready(PLURAL, "payments")).get("reason") == "PlaintextCredentialsRefused" and c,
        what="plaintext SASL refused",
    )
    assert "spec.auth.allowPlaintext" in refused["message"]
    # Allowed explicitly, SASL meets a broker that speaks no SASL: reported and retried.
    cluster.patch(PLURAL, "payments", {"spec": {"auth": {"allowPlaintext": True}}})
    eventually(
        lambda: cluster.ready(PLURAL, "payments").get("reason") == "BrokerUnavailable", what="broker reported"
    )
    assert password not in json.dumps(cluster.get(PLURAL, "payments"))
    assert password not in operator.log()
    assert password not in cluster.events_text()
    assert operator.running


def test_a_topic_deleted_behind_its_back_is_recreated(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    cluster.apply(kafkaqueue(kafka_broker, unique))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready=True")
    topic = f"{unique}.orders"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.delete_topics([topic])[topic].result(10)
    eventually(lambda: topic in topics_on(kafka_broker), what="the topic re-created by the periodic check")
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready again")


def test_delete_with_the_broker_down_is_retried_then_released(
    cluster: Cluster, operator: OperatorProcess, own_kafka_broker: Tansu, unique: str
) -> None:
    operator.stop()
    operator.extra_args = ["--delete-retries", "3"]
    operator.start()
    cluster.apply(kafkaqueue(own_kafka_broker, unique, deletionPolicy="Delete"))
    eventually(lambda: cluster.ready(PLURAL, "orders").get("status") == "True", what="Ready=True")
    own_kafka_broker.stop()
    cluster.delete(PLURAL, "orders")
    held = cluster.get(PLURAL, "orders")
    assert held["metadata"]["deletionTimestamp"], "held by the finalizer while the topics cannot be deleted"
    eventually(lambda: cluster.gone(PLURAL, "orders"), timeout=40, what="released after the retries")
    assert "cannot delete the topics yet" in operator.log()
    assert operator.running


def test_a_secret_without_the_label_is_refused_with_how_to_fix_it(
    cluster: Cluster, operator: OperatorProcess, kafka_broker: Tansu, unique: str
) -> None:
    docs = kafkaqueue(kafka_broker, unique, "kafkaqueue-sasl.yaml")
    for secret in docs[:2]:
        del secret["metadata"]["labels"]  # any other Secret of the namespace, e.g. a database's
    cluster.apply(docs)
    refused = eventually(
        lambda: (c := cluster.ready(PLURAL, "payments")).get("reason") == "SecretNotAllowed" and c,
        what="the unlabelled Secret refused",
    )
    assert (
        "kubectl label secret" in refused["message"]
        and "queue-operator.dev/secret=true" in refused["message"]
    )
    assert "change-me" not in json.dumps(cluster.get(PLURAL, "payments"))
