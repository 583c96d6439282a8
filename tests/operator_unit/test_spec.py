"""Reading DelayQueue and KafkaQueue specs: defaults, and errors a person can act on."""

from __future__ import annotations

from typing import Any

import pytest
from operator_unit.crd_admission import admit

from queue_engine.policy import DeliveryPolicy
from queue_operator.spec import (
    DEFAULT_BEANSTALKD_IMAGE,
    DelayQueueSpec,
    KafkaQueueSpec,
    SaslSecretRef,
    SecretRef,
    SpecError,
)


def dq_body(spec: dict[str, Any] | None = None, name: str = "reminders") -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "DelayQueue",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"redis": {"url": "redis://redis:6379/0"}} if spec is None else spec,
    }


def kq_body(spec: dict[str, Any] | None = None, name: str = "orders") -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "KafkaQueue",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"brokers": ["kafka:9092"]} if spec is None else spec,
    }


def test_delayqueue_defaults() -> None:
    spec = DelayQueueSpec.from_body(dq_body())
    assert spec == DelayQueueSpec(
        replicas=3,
        tube="reminders",
        image=DEFAULT_BEANSTALKD_IMAGE,
        resources={},
        max_job_bytes=65535,
        persistence_enabled=True,
        persistence_size="1Gi",
        storage_class_name=None,
        fsync_millis=None,
        delete_claim=False,
        redis_url="redis://redis:6379/0",
        redis_secret_ref=None,
        delivery={},
    )


def test_delayqueue_every_field() -> None:
    spec = DelayQueueSpec.from_body(
        dq_body(
            {
                "replicas": 5,
                "tube": "jobs-v2",
                "image": "registry.example/beanstalkd:1.13",
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"memory": 1073741824},
                },
                "maxJobBytes": 1048576,
                "persistence": {
                    "enabled": False,
                    "size": "5Gi",
                    "storageClassName": "fast",
                    "fsyncMillis": 0,
                },
                "redis": {"secretRef": {"name": "redis-auth", "key": "url"}},
                "delivery": {"maxAttempts": 2, "backoff": {"initial": "100ms"}},
            }
        )
    )
    assert (spec.replicas, spec.tube, spec.image, spec.max_job_bytes) == (
        5,
        "jobs-v2",
        "registry.example/beanstalkd:1.13",
        1048576,
    )
    assert spec.resources == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"memory": 1073741824},
    }
    assert (spec.persistence_enabled, spec.persistence_size, spec.storage_class_name, spec.fsync_millis) == (
        False,
        "5Gi",
        "fast",
        0,
    )
    assert (spec.redis_url, spec.redis_secret_ref) == (None, SecretRef("redis-auth", "url"))
    assert spec.redis_secret_ref == ("redis-auth", "url")  # still a plain (name, key) pair
    assert spec.delivery == {"maxAttempts": 2, "backoff": {"initial": "100ms"}}


def test_kafkaqueue_defaults() -> None:
    spec = KafkaQueueSpec.from_body(kq_body())
    assert spec == KafkaQueueSpec(
        brokers=["kafka:9092"],
        topic="orders",
        partitions=3,
        replication_factor=None,  # the brokers' default
        topic_config={},
        group="default.orders",  # namespaced: another namespace's "orders" never shares it
        offset="last",
        dead_letter_topic="orders.dlq",
        deletion_policy="Retain",
        sasl_mechanism=None,
        sasl_secret_ref=None,
        tls_ca_secret_ref=None,
        delivery={},
        tls=False,
    )
    assert spec.security_protocol == "PLAINTEXT"


def test_kafkaqueue_librdkafka_passes_through() -> None:
    settings = {"session.timeout.ms": 6000, "enable.partition.eof": False, "client.rack": "a"}
    spec = KafkaQueueSpec.from_body(kq_body({"brokers": ["k:9092"], "librdkafka": settings}))
    assert spec.librdkafka == settings


def test_kafkaqueue_every_field() -> None:
    spec = KafkaQueueSpec.from_body(
        kq_body(
            {
                "brokers": ["k0:9093", "[::1]:9093"],
                "topic": {
                    "name": "payments.events",
                    "partitions": 12,
                    "replicationFactor": 3,
                    "config": {"retention.ms": 604800000, "compression.type": "zstd", "preallocate": True},
                },
                "group": "payments-processor",
                "offset": "first",
                "deadLetterTopic": "payments.dead",
                "deletionPolicy": "Delete",
                "auth": {
                    "sasl": {
                        "mechanism": "SCRAM-SHA-512",
                        "secretRef": {"name": "user", "passwordKey": "pw"},
                    },
                    "tls": {"caSecretRef": {"name": "ca"}},
                },
                "delivery": {"maxAttempts": 3},
            }
        )
    )
    assert spec.brokers == ["k0:9093", "[::1]:9093"]
    assert (spec.topic, spec.partitions, spec.replication_factor) == ("payments.events", 12, 3)
    # Kafka takes every config as a string.
    assert spec.topic_config == {
        "retention.ms": "604800000",
        "compression.type": "zstd",
        "preallocate": "true",
    }
    assert (spec.group, spec.offset, spec.dead_letter_topic, spec.deletion_policy) == (
        "payments-processor",
        "first",
        "payments.dead",
        "Delete",
    )
    assert spec.sasl_mechanism == "SCRAM-SHA-512"
    assert spec.sasl_secret_ref == SaslSecretRef(name="user", username_key="username", password_key="pw")
    assert spec.tls_ca_secret_ref == SecretRef("ca", "ca.crt")
    assert spec.security_protocol == "SASL_SSL"
    assert spec.delivery == {"maxAttempts": 3}


@pytest.mark.parametrize(
    ("auth", "protocol"),
    [
        ({"tls": {}}, "SSL"),
        ({"sasl": {"mechanism": "PLAIN", "secretRef": {"name": "u"}}}, "SASL_PLAINTEXT"),
    ],
)
def test_kafkaqueue_security_protocol(auth: dict[str, Any], protocol: str) -> None:
    assert (
        KafkaQueueSpec.from_body(kq_body({"brokers": ["k:9092"], "auth": auth})).security_protocol == protocol
    )


def test_dead_letter_topic_follows_a_custom_topic_name() -> None:
    spec = KafkaQueueSpec.from_body(kq_body({"brokers": ["k:9092"], "topic": {"name": "events"}}))
    assert (spec.topic, spec.dead_letter_topic, spec.group) == ("events", "events.dlq", "default.orders")


def test_the_default_group_differs_between_namespaces() -> None:
    team_a, team_b = kq_body(), kq_body()
    team_b["metadata"]["namespace"] = "team-b"
    groups = {KafkaQueueSpec.from_body(body).group for body in (team_a, team_b)}
    assert groups == {"default.orders", "team-b.orders"}


@pytest.mark.parametrize(
    "spec",
    [
        {"redis": {"url": "redis://r:6379"}},
        {
            "redis": {"secretRef": {"name": "r", "key": "url"}},
            "replicas": 1,
            "persistence": {"enabled": False},
        },
        {
            "redis": {"url": "rediss://r:6380/1"},
            "persistence": {"fsyncMillis": 10},
            "delivery": {"timeout": "5s"},
        },
    ],
)
def test_delayqueue_defaults_match_the_crd(spec: dict[str, Any]) -> None:
    """The operator reads the same spec whether or not the API server filled the defaults."""
    raw = dq_body(spec)
    defaulted = admit(raw)
    parsed, parsed_defaulted = DelayQueueSpec.from_body(raw), DelayQueueSpec.from_body(defaulted)
    assert _without_delivery(parsed) == _without_delivery(parsed_defaulted)
    # Delivery is passed on as given; the server's filled-in form must mean the same policy.
    assert DeliveryPolicy.from_mapping(parsed.delivery) == DeliveryPolicy.from_mapping(
        parsed_defaulted.delivery
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"brokers": ["k:9092"]},
        {"brokers": ["k:9092"], "topic": {"name": "t", "partitions": 1}, "offset": "first"},
        {
            "brokers": ["k:9092"],
            "auth": {"sasl": {"mechanism": "PLAIN", "secretRef": {"name": "u"}}, "tls": {}},
        },
    ],
)
def test_kafkaqueue_defaults_match_the_crd(spec: dict[str, Any]) -> None:
    raw = kq_body(spec)
    parsed, parsed_defaulted = KafkaQueueSpec.from_body(raw), KafkaQueueSpec.from_body(admit(raw))
    assert _without_delivery(parsed) == _without_delivery(parsed_defaulted)
    assert DeliveryPolicy.from_mapping(parsed.delivery) == DeliveryPolicy.from_mapping(
        parsed_defaulted.delivery
    )


def _without_delivery(spec: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(spec).items() if k != "delivery"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"redis": {}}, "spec.redis needs url (redis://host:6379/0) or secretRef"),
        (
            {"redis": {"url": "redis://r", "secretRef": {"name": "s", "key": "k"}}},
            "spec.redis has both url and secretRef",
        ),
        ({"redis": {"url": "http://user:hunter2@r"}}, "spec.redis.url must start with redis://"),
        ({"redis": {"secretRef": {"key": "url"}}}, "spec.redis.secretRef.name is missing"),
        ({"redis": {"secretRef": {"name": "s"}}}, "spec.redis.secretRef.key is missing"),
        ({"redis": {"secretRef": {"name": "s", "key": "a/b"}}}, "spec.redis.secretRef.key 'a/b'"),
        ({"redis": {"url": "redis://r"}, "replicas": 0}, "spec.replicas is 0; use a number between 1 and 9"),
        (
            {"redis": {"url": "redis://r"}, "replicas": 10},
            "spec.replicas is 10; use a number between 1 and 9",
        ),
        ({"redis": {"url": "redis://r"}, "replicas": "3"}, "spec.replicas must be a whole number"),
        ({"redis": {"url": "redis://r"}, "replicas": True}, "spec.replicas must be a whole number"),
        ({"redis": {"url": "redis://r"}, "tube": "-x"}, "spec.tube '-x'"),
        ({"redis": {"url": "redis://r"}, "image": "bad image"}, "spec.image 'bad image'"),
        ({"redis": {"url": "redis://r"}, "maxJobBytes": 0}, "spec.maxJobBytes is 0"),
        ({"redis": {"url": "redis://r"}, "persistence": {"size": "big"}}, "spec.persistence.size 'big'"),
        (
            {"redis": {"url": "redis://r"}, "persistence": {"enabled": "yes"}},
            "spec.persistence.enabled must be true or false",
        ),
        (
            {"redis": {"url": "redis://r"}, "persistence": {"fsyncMillis": -5}},
            "spec.persistence.fsyncMillis is -5",
        ),
        (
            {"redis": {"url": "redis://r"}, "persistence": {"sise": "1Gi"}},
            "unknown field(s) spec.persistence.sise",
        ),
        ({"redis": {"url": "redis://r"}, "persistence": []}, "spec.persistence must be an object"),
        (
            {"redis": {"url": "redis://r"}, "resources": {"requests": {"cpu": "lots"}}},
            "spec.resources.requests.cpu is 'lots'",
        ),
        (
            {"redis": {"url": "redis://r"}, "resources": {"request": {}}},
            "unknown field(s) spec.resources.request",
        ),
        ({"redis": {"url": "redis://r"}, "replica": 3}, "unknown field(s) spec.replica"),
        ({"redis": {"url": "redis://r"}, "delivery": {"maxAttempts": 0}}, "spec.delivery.maxAttempts is 0"),
        ({"redis": {"url": "redis://r"}, "delivery": {"timeout": "soon"}}, "spec.delivery: duration 'soon'"),
        ({"redis": {"url": "redis://r"}, "delivery": {"tries": 3}}, "spec.delivery: unknown key(s) tries"),
        (
            {"redis": {"url": "redis://r"}, "delivery": {"backoff": {"initial": "10s", "max": "1s"}}},
            "spec.delivery.backoff needs 0 <= initial <= max",
        ),
    ],
)
def test_delayqueue_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as error:
        DelayQueueSpec.from_body(dq_body(spec))
    assert message in str(error.value)
    assert "hunter2" not in str(error.value)  # a URL may carry a password


@pytest.mark.parametrize("name", ["q" * 42, "1queue", "my.queue", "Queue"])
def test_delayqueue_name_must_fit_the_children_names(name: str) -> None:
    with pytest.raises(SpecError, match=f"metadata.name '{name}': a DelayQueue name must be at most 41"):
        DelayQueueSpec.from_body(dq_body(name=name))


def test_missing_name_is_reported() -> None:
    with pytest.raises(SpecError, match=r"metadata\.name is missing"):
        KafkaQueueSpec.from_body({"metadata": {}, "spec": {"brokers": ["k:9092"]}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({}, "spec.brokers is missing; list the bootstrap brokers as host:port"),
        ({"brokers": []}, "spec.brokers is missing"),
        ({"brokers": "k:9092"}, "spec.brokers must be a list of host:port strings"),
        ({"brokers": ["kafka"]}, "spec.brokers entry 'kafka': write it as host:port"),
        ({"brokers": ["kafka:99999"]}, "spec.brokers entry 'kafka:99999'"),
        (
            {"brokers": ["k:9092"], "topic": {"name": "bad topic"}},
            "spec.topic.name 'bad topic': a Kafka topic name",
        ),
        ({"brokers": ["k:9092"], "topic": {"name": ".."}}, "spec.topic.name '..'"),
        ({"brokers": ["k:9092"], "topic": {"name": "t" * 250}}, "spec.topic.name"),
        (
            {"brokers": ["k:9092"], "topic": {"partitions": 0}},
            "spec.topic.partitions is 0; use a number at least 1",
        ),
        ({"brokers": ["k:9092"], "topic": {"replicationFactor": 0}}, "spec.topic.replicationFactor is 0"),
        ({"brokers": ["k:9092"], "topic": {"partition": 3}}, "unknown field(s) spec.topic.partition"),
        (
            {"brokers": ["k:9092"], "topic": {"config": {"retention.ms": [1]}}},
            "spec.topic.config.retention.ms must be",
        ),
        (
            {"brokers": ["k:9092"], "topic": {"config": {"Retention MS": "1"}}},
            "spec.topic.config.Retention MS:",
        ),
        (
            {"brokers": ["k:9092"], "deadLetterTopic": "orders"},
            "spec.deadLetterTopic 'orders' is the topic itself",
        ),
        ({"brokers": ["k:9092"], "deadLetterTopic": "no/slash"}, "spec.deadLetterTopic 'no/slash'"),
        ({"brokers": ["k:9092"], "group": ""}, "spec.group is empty"),
        ({"brokers": ["k:9092"], "offset": "earliest"}, "spec.offset is 'earliest'; use one of first, last"),
        (
            {"brokers": ["k:9092"], "deletionPolicy": "delete"},
            "spec.deletionPolicy is 'delete'; use one of Retain, Delete",
        ),
        (
            {"brokers": ["k:9092"], "auth": {"sasl": {"secretRef": {"name": "u"}}}},
            "spec.auth.sasl.mechanism is missing",
        ),
        (
            {"brokers": ["k:9092"], "auth": {"sasl": {"mechanism": "GSSAPI", "secretRef": {"name": "u"}}}},
            "spec.auth.sasl.mechanism is 'GSSAPI'; use one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
        ),
        (
            {"brokers": ["k:9092"], "auth": {"sasl": {"mechanism": "PLAIN"}}},
            "spec.auth.sasl.secretRef.name is missing; name a Secret with keys username and password",
        ),
        (
            {
                "brokers": ["k:9092"],
                "auth": {"sasl": {"mechanism": "PLAIN", "secretRef": {"name": "u", "usernameKey": "a b"}}},
            },
            "spec.auth.sasl.secretRef.usernameKey 'a b'",
        ),
        (
            {"brokers": ["k:9092"], "auth": {"tls": {"caSecretRef": {}}}},
            "spec.auth.tls.caSecretRef.name is missing",
        ),
        ({"brokers": ["k:9092"], "auth": {"kerberos": {}}}, "unknown field(s) spec.auth.kerberos"),
        ({"brokers": ["k:9092"], "delivery": {"maxAttempts": -1}}, "spec.delivery.maxAttempts is -1"),
        (
            {"brokers": ["k:9092"], "librdkafka": {"sasl.password": "x"}},
            "spec.librdkafka.sasl.password: security settings come from spec.auth",
        ),
        (
            {"brokers": ["k:9092"], "librdkafka": {"fetch.wait.max.ms": [1]}},
            "spec.librdkafka.fetch.wait.max.ms must",
        ),
    ],
)
def test_kafkaqueue_errors_name_the_field(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError) as error:
        KafkaQueueSpec.from_body(kq_body(spec))
    assert message in str(error.value)


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_a_redis_password_never_shows_in_the_spec_repr() -> None:
    spec = DelayQueueSpec.from_body(dq_body({"redis": {"url": "redis://:hunter2@redis:6379/0"}}))
    assert spec.redis_url == "redis://:hunter2@redis:6379/0"
    assert "hunter2" not in repr(spec)
