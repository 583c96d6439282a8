"""The CRD files: valid CustomResourceDefinitions, structural, and refusing what a schema can refuse."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
from operator_unit.crd_admission import (
    CRD_FILES,
    Refused,
    admit,
    load_crd,
    openapi_schema,
    schema_nodes,
    to_jsonschema,
)

from queue_operator.spec import DelayQueueSpec

KINDS = sorted(CRD_FILES)


def delayqueue(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "DelayQueue",
        "metadata": {"name": "reminders", "namespace": "default"},
        "spec": {"redis": {"url": "redis://redis:6379/0"}, **spec},
    }


def kafkaqueue(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "queue-operator.dev/v1alpha1",
        "kind": "KafkaQueue",
        "metadata": {"name": "orders", "namespace": "default"},
        "spec": {"brokers": ["kafka:9092"], **spec},
    }


@pytest.mark.parametrize("version", ["1.27.0", "1.33.0", "1.35.0"])
@pytest.mark.parametrize("kind", KINDS)
def test_crd_is_a_valid_custom_resource_definition(kind: str, version: str) -> None:
    kubernetes_validate.validate(load_crd(kind), version, strict=True)


def test_strict_crd_validation_catches_a_misspelt_schema_keyword() -> None:
    crd = copy.deepcopy(load_crd("DelayQueue"))
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["replicas"][
        "maximun"
    ] = 9
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(crd, "1.33.0", strict=True)


@pytest.mark.parametrize(
    ("kind", "plural", "short"), [("DelayQueue", "delayqueues", "dq"), ("KafkaQueue", "kafkaqueues", "kq")]
)
def test_names_scope_and_status_subresource(kind: str, plural: str, short: str) -> None:
    crd = load_crd(kind)
    assert crd["metadata"]["name"] == f"{plural}.queue-operator.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == (kind, plural, [short])
    assert "queues" in names["categories"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


@pytest.mark.parametrize(("kind", "count_column"), [("DelayQueue", "Replicas"), ("KafkaQueue", "Partitions")])
def test_printer_columns_show_ready_count_and_age(kind: str, count_column: str) -> None:
    columns = {c["name"]: c for c in load_crd(kind)["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns[count_column]["type"] == "integer"
    assert columns["Age"] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
    assert columns["Message"]["priority"] == 1  # only in -o wide


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    """Every node has a type, except int-or-string nodes and the free-form topic config."""
    untyped = [
        path
        for path, node in schema_nodes(openapi_schema(kind))
        if "type" not in node and not node.get("x-kubernetes-int-or-string") and not path.endswith("|")
    ]
    assert untyped == []


def test_unknown_fields_are_kept_only_in_the_free_form_maps() -> None:
    free_form = {
        (kind, path)
        for kind in KINDS
        for path, node in schema_nodes(openapi_schema(kind))
        if node.get("x-kubernetes-preserve-unknown-fields")
    }
    assert free_form == {("KafkaQueue", "spec.topic.config"), ("KafkaQueue", "spec.librdkafka")}


@pytest.mark.parametrize("kind", KINDS)
def test_every_default_is_valid_for_its_own_field(kind: str) -> None:
    defaults = [(path, node) for path, node in schema_nodes(openapi_schema(kind)) if "default" in node]
    assert defaults, "the CRD declares no defaults"
    for path, node in defaults:
        errors = list(jsonschema.Draft7Validator(to_jsonschema(node)).iter_errors(node["default"]))
        assert errors == [], path


def test_delayqueue_defaults_are_filled_as_the_api_server_would() -> None:
    spec = admit(delayqueue())["spec"]
    assert spec["replicas"] == 3
    assert spec["maxJobBytes"] == 65535
    assert spec["persistence"] == {"enabled": True, "size": "1Gi", "deleteClaim": False}
    assert spec["delivery"] == {
        "maxAttempts": 5,
        "timeout": "30s",
        "backoff": {"initial": "1s", "max": "60s", "multiplier": 2},
    }
    # Left to the operator, so that a new operator version can change them for existing queues.
    assert "image" not in spec
    assert "tube" not in spec


def test_kafkaqueue_defaults_are_filled_as_the_api_server_would() -> None:
    spec = admit(
        kafkaqueue(
            auth={
                "sasl": {"mechanism": "PLAIN", "secretRef": {"name": "s"}},
                "tls": {"caSecretRef": {"name": "ca"}},
            }
        )
    )["spec"]
    assert spec["topic"] == {"partitions": 3}, "no replicationFactor: the brokers' default"
    assert (spec["offset"], spec["deletionPolicy"]) == ("last", "Retain")
    assert spec["auth"]["sasl"]["secretRef"] == {
        "name": "s",
        "usernameKey": "username",
        "passwordKey": "password",
    }
    assert spec["auth"]["tls"]["caSecretRef"] == {"name": "ca", "key": "ca.crt"}
    assert spec["delivery"]["maxAttempts"] == 5


@pytest.mark.parametrize(
    ("obj", "complaint"),
    [
        (delayqueue(replicas=0), "spec.replicas"),
        (delayqueue(replicas=10), "spec.replicas"),
        (delayqueue(maxJobBytes=0), "spec.maxJobBytes"),
        (delayqueue(maxJobBytes=2**31), "spec.maxJobBytes"),
        (delayqueue(tube="-leading-dash"), "spec.tube"),
        (delayqueue(persistence={"size": "lots"}), "spec.persistence.size"),
        (delayqueue(persistence={"fsyncMillis": -1}), "spec.persistence.fsyncMillis"),
        (delayqueue(resources={"requests": {"memory": "much"}}), "spec.resources.requests.memory"),
        (delayqueue(resources={"request": {"memory": "1Gi"}}), "spec.resources"),
        (delayqueue(redis={"url": "http://redis:6379"}), "spec.redis.url"),
        (delayqueue(redis={"secretRef": {"name": "r"}}), "spec.redis.secretRef"),
        (delayqueue(redis={}), "exactly one of url or secretRef"),
        (
            delayqueue(redis={"url": "redis://r", "secretRef": {"name": "r", "key": "url"}}),
            "exactly one of url or secretRef",
        ),
        (delayqueue(delivery={"timeout": "30 seconds"}), "spec.delivery.timeout"),
        (delayqueue(delivery={"maxAttempts": 0}), "spec.delivery.maxAttempts"),
        (delayqueue(delivery={"backoff": {"multiplier": 0.5}}), "spec.delivery.backoff.multiplier"),
        (delayqueue(replica=3), "'replica' was unexpected"),
        ({**delayqueue(), "metadata": {"name": "a" * 42, "namespace": "default"}}, "metadata.name"),
        ({**delayqueue(), "metadata": {"name": "q.with.dots", "namespace": "default"}}, "metadata.name"),
        (kafkaqueue(brokers=[]), "spec.brokers"),
        (kafkaqueue(brokers=["kafka"]), "spec.brokers.0"),
        (kafkaqueue(topic={"partitions": 0}), "spec.topic.partitions"),
        (kafkaqueue(topic={"name": "bad topic"}), "spec.topic.name"),
        (kafkaqueue(topic={"replicationFactor": 0}), "spec.topic.replicationFactor"),
        (kafkaqueue(offset="middle"), "spec.offset"),
        (kafkaqueue(deletionPolicy="Keep"), "spec.deletionPolicy"),
        (
            kafkaqueue(auth={"sasl": {"mechanism": "GSSAPI", "secretRef": {"name": "s"}}}),
            "spec.auth.sasl.mechanism",
        ),
        (kafkaqueue(auth={"sasl": {"mechanism": "PLAIN"}}), "'secretRef' is a required property"),
        (kafkaqueue(topic={"name": "orders"}, deadLetterTopic="orders"), "spec.deadLetterTopic must differ"),
    ],
)
def test_schema_refuses_what_a_schema_can_say(obj: dict[str, Any], complaint: str) -> None:
    with pytest.raises(Refused) as refused:
        admit(obj)
    assert complaint in str(refused.value)


def test_kafkaqueue_without_brokers_is_refused() -> None:
    obj = kafkaqueue()
    del obj["spec"]["brokers"]
    with pytest.raises(Refused, match="'brokers' is a required property"):
        admit(obj)


def test_delayqueue_without_redis_is_accepted_and_provisioned() -> None:
    obj = delayqueue()
    del obj["spec"]["redis"]
    admitted = admit(obj)
    assert "redis" not in admitted["spec"]
    spec = DelayQueueSpec.from_body({**admitted, "metadata": {"name": "q", "namespace": "ns"}})
    assert spec.redis_provisioned and spec.redis_secret_ref == ("q-redis", "url")


def test_topic_config_takes_any_kafka_config() -> None:
    config = {"retention.ms": "604800000", "min.insync.replicas": 2, "unclean.leader.election.enable": False}
    assert admit(kafkaqueue(topic={"config": config}))["spec"]["topic"]["config"] == config


@pytest.mark.parametrize(
    ("old_spec", "new_spec", "complaint"),
    [
        ({"topic": {"partitions": 6}}, {"topic": {"partitions": 3}}, "cannot be lowered"),
        ({"topic": {"name": "a"}}, {"topic": {"name": "b"}}, "spec.topic.name cannot change"),
        (
            {"topic": {"replicationFactor": 1}},
            {"topic": {"replicationFactor": 3}},
            "replicationFactor cannot change",
        ),
        ({}, {"topic": {"replicationFactor": 3}}, "replicationFactor cannot be set or removed"),
        ({"topic": {"replicationFactor": 3}}, {}, "replicationFactor cannot be set or removed"),
        ({}, {"topic": {"name": "orders"}}, "spec.topic.name cannot be set or removed"),
        ({"topic": {"name": "orders"}}, {}, "spec.topic.name cannot be set or removed"),
        ({}, {"group": "default.orders"}, "spec.group cannot change"),
        ({"group": "a"}, {"group": "b"}, "spec.group cannot change"),
        ({"group": "a"}, {}, "spec.group cannot change"),
        ({}, {"deadLetterTopic": "orders.dead"}, "spec.deadLetterTopic cannot change"),
        ({"deadLetterTopic": "x.dlq"}, {"deadLetterTopic": "y.dlq"}, "spec.deadLetterTopic cannot change"),
    ],
)
def test_kafkaqueue_updates_the_topic_cannot_follow_are_refused(
    old_spec: dict[str, Any], new_spec: dict[str, Any], complaint: str
) -> None:
    old = admit(kafkaqueue(**old_spec))
    with pytest.raises(Refused, match=complaint):
        admit(kafkaqueue(**new_spec), old=old)


def test_kafkaqueue_unchanged_fixed_fields_are_accepted() -> None:
    spec = {"topic": {"name": "orders"}, "group": "g", "deadLetterTopic": "orders.dead"}
    old = admit(kafkaqueue(**spec))
    assert admit(kafkaqueue(**spec, deletionPolicy="Delete"), old=old)["spec"]["group"] == "g"
    bare = admit(kafkaqueue())
    assert admit(kafkaqueue(offset="first"), old=bare)["spec"]["offset"] == "first"


def test_kafkaqueue_partitions_can_be_raised() -> None:
    old = admit(kafkaqueue(topic={"partitions": 3}))
    assert admit(kafkaqueue(topic={"partitions": 12}), old=old)["spec"]["topic"]["partitions"] == 12


@pytest.mark.parametrize("persistence", [{"enabled": False}, {"size": "2Gi"}, {"storageClassName": "other"}])
def test_delayqueue_volume_settings_are_fixed_at_creation(persistence: dict[str, Any]) -> None:
    old = admit(delayqueue(persistence={"storageClassName": "standard"}))
    with pytest.raises(Refused, match="cannot change after creation"):
        admit(delayqueue(persistence={"storageClassName": "standard", **persistence}), old=old)


@pytest.mark.parametrize(
    ("old_persistence", "new_persistence"),
    [({}, {"storageClassName": "fast"}), ({"storageClassName": "fast"}, {})],
    ids=["unset-to-set", "set-to-unset"],
)
def test_delayqueue_storage_class_cannot_be_set_or_removed_later(
    old_persistence: dict[str, Any], new_persistence: dict[str, Any]
) -> None:
    old = admit(delayqueue(persistence=old_persistence))
    with pytest.raises(Refused, match="storageClassName cannot be set or removed after creation"):
        admit(delayqueue(persistence=new_persistence), old=old)


def test_delayqueue_delete_claim_defaults_to_false_and_can_change() -> None:
    old = admit(delayqueue())
    assert old["spec"]["persistence"]["deleteClaim"] is False
    assert admit(delayqueue(persistence={"deleteClaim": True}), old=old)["spec"]["persistence"]["deleteClaim"]


def test_delayqueue_scaling_and_fsync_can_change() -> None:
    old = admit(delayqueue(replicas=3))
    new = admit(delayqueue(replicas=5, persistence={"fsyncMillis": 0}), old=old)
    assert new["spec"]["replicas"] == 5


@pytest.mark.parametrize(
    ("kind", "status"),
    [
        (
            "DelayQueue",
            {
                "observedGeneration": 2,
                "readyReplicas": 3,
                "endpoints": ["reminders-beanstalkd-0.reminders-beanstalkd.default.svc.cluster.local:11300"],
            },
        ),
        (
            "KafkaQueue",
            {"observedGeneration": 1, "topic": "orders", "deadLetterTopic": "orders.dlq", "partitions": 3},
        ),
    ],
)
def test_status_the_operator_writes_fits_the_schema(kind: str, status: dict[str, Any]) -> None:
    obj = delayqueue() if kind == "DelayQueue" else kafkaqueue()
    condition = {
        "type": "Ready",
        "status": "False",
        "reason": "BrokerUnreachable",
        "message": "cannot reach kafka:9092; retrying in 30s",
        "lastTransitionTime": "2026-11-27T04:00:00Z",
        "observedGeneration": 1,
    }
    obj["status"] = {**status, "conditions": [condition]}
    assert admit(obj)["status"]["conditions"] == [condition]
    obj["status"]["conditions"] = [{**condition, "status": "Maybe"}]
    with pytest.raises(Refused, match=r"status\.conditions\.0\.status"):
        admit(obj)


def test_longest_delayqueue_name_is_accepted_by_schema_and_operator() -> None:
    obj = {**delayqueue(), "metadata": {"name": "q" * 41, "namespace": "default", "uid": "u"}}
    assert DelayQueueSpec.from_body(admit(obj)).tube == "q" * 41
